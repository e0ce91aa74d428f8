"""Weighted splits across InferenceServices, in the shape of Seldon Core 2's Experiment.

```yaml
apiVersion: mlops.seldon.io/v1alpha1
kind: Experiment
metadata: {name: mnist-ab}          # the public model name requests use
spec:
  default: mnist-a                  # optional: one of the candidates
  candidates:
  - {name: mnist-a, weight: 70}     # InferenceServices, each with a weight
  - {name: mnist-b, weight: 30}
  mirror: {name: mnist-c, percent: 10}   # optional: gets copies, answers discarded
```

Requests for the public name are split by weight among the candidates that are
ready (gateway.control.router); when none is, they go to ``default`` (or the
first candidate with a weight), which loads as a first request does. Seldon's
``default`` also makes the experiment take over that model's own name; here a
candidate's own name keeps reaching only that candidate, and ``default`` says
only where requests go while no candidate is ready. ``mirror`` gets ``percent``
of the requests as copies, sent by Envoy's request mirroring (the body never
reaches Python); their answers are discarded, and the mirror's failures,
slowness or absence change nothing for the client. Seldon's pipeline experiments
(``resourceType: pipeline``) are refused, as not served.

Refused at apply, naming the problem, with nothing stored: weights negative or
all zero, a candidate named twice, a ``default`` that is no candidate, a mirror
that is also a candidate or whose percent is outside 0-100; the registry adds
what needs the InferenceServices (an unknown candidate or mirror, a public name
that is an InferenceService's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.core.errors import InvalidSpec, ModelNotFound
from gateway.store import Store

from .resources import NAME_PATTERN, ObjectMeta, parse_resource, stored_manifest

API_VERSION = "mlops.seldon.io/v1alpha1"
KIND = "Experiment"
PREFIX = "experiments/"


class Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    weight: int = Field(ge=0)


class Mirror(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_PATTERN, max_length=63)
    percent: int = Field(ge=0, le=100)


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    default: str | None = None
    candidates: list[Candidate] = Field(min_length=1)
    resourceType: Literal["model"] = "model"
    mirror: Mirror | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        names = [c.name for c in self.candidates]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"candidates: {', '.join(twice)} named more than once")
        if not any(c.weight for c in self.candidates):
            raise ValueError("candidates: every weight is 0; at least one must be over 0")
        if self.default is not None and self.default not in names:
            raise ValueError(f"default: '{self.default}' is not one of the candidates")
        if self.mirror is not None and self.mirror.name in names:
            raise ValueError(
                f"mirror: '{self.mirror.name}' is also a candidate; a mirror gets copies of "
                "requests whose answers are discarded"
            )
        return self


class Experiment(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    apiVersion: Literal["mlops.seldon.io/v1alpha1"]
    kind: Literal["Experiment"]
    metadata: ObjectMeta
    spec: ExperimentSpec

    @property
    def name(self) -> str:
        return self.metadata.name


def parse_experiment(document: Any) -> Experiment:
    """Validate one document; InvalidSpec says which field is wrong and why."""
    return parse_resource(document, Experiment, (KIND,), API_VERSION)


@dataclass(frozen=True, slots=True)
class Split:
    """What the router reads per request for an experiment's public name."""

    candidates: tuple[tuple[str, int], ...]  # (InferenceService name, weight), weight > 0
    default: str  # where requests go while no candidate is ready
    mirror: tuple[str, int] | None = None  # (InferenceService, percent) that gets copies


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    experiment: Experiment
    manifest: dict[str, Any]
    created: float  # unix time

    @property
    def name(self) -> str:
        return self.experiment.name

    def split(self) -> Split:
        spec = self.experiment.spec
        weighted = tuple((c.name, c.weight) for c in spec.candidates if c.weight)
        mirror = (spec.mirror.name, spec.mirror.percent) if spec.mirror else None
        return Split(weighted, spec.default or weighted[0][0], mirror)


class ExperimentCatalog:
    """The experiments of one namespace, kept in the store (every replica mirrors them)."""

    def __init__(self, store: Store, namespace: str) -> None:
        self._store = store
        self._namespace = namespace
        self._records: dict[str, ExperimentRecord] = {}
        self._splits: dict[str, Split] = {}  # public name -> its split; read per request
        self.mirrored = False  # whether any experiment has a mirror: read per request

    def split(self, name: str) -> Split | None:
        return self._splits.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._records

    async def restore(self) -> None:
        for data in (await self._store.items(PREFIX)).values():
            self._keep(self._record(data))

    def absorb(self, name: str, data: dict[str, Any] | None) -> None:
        """Take in a change another gateway replica made (or this one's, coming back)."""
        if data is None:
            self._records.pop(name, None)
            self._splits.pop(name, None)
            self._note_mirrors()
        else:
            self._keep(self._record(data))

    def list(self) -> list[ExperimentRecord]:
        return sorted(self._records.values(), key=lambda r: r.name)

    def get(self, name: str) -> ExperimentRecord:
        found = self._records.get(name)
        if found is None:
            raise ModelNotFound(name, f"experiments.mlops.seldon.io '{name}' not found")
        return found

    def parse(self, document: Any) -> tuple[Experiment, dict[str, Any]]:
        """The experiment and the manifest to store; InvalidSpec for a bad document."""
        experiment = parse_experiment(document)
        manifest = stored_manifest(experiment)
        namespace = manifest["metadata"].setdefault("namespace", self._namespace)
        if namespace != self._namespace:
            raise InvalidSpec(
                f"namespace '{namespace}': this gateway serves namespace '{self._namespace}'"
            )
        return experiment, manifest

    async def put(
        self, experiment: Experiment, manifest: dict[str, Any]
    ) -> tuple[ExperimentRecord, str]:
        """Store an experiment the registry has checked; what happened."""
        old = self._records.get(experiment.name)
        if old is not None and old.manifest == manifest:
            return old, "unchanged"
        record = ExperimentRecord(experiment, manifest, old.created if old else time.time())
        await self._store.put(
            PREFIX + record.name, {"manifest": manifest, "created": record.created}
        )
        self._keep(record)
        return record, "created" if old is None else "configured"

    async def delete(self, name: str) -> None:
        self.get(name)
        await self._store.delete(PREFIX + name)
        self.absorb(name, None)

    def _keep(self, record: ExperimentRecord) -> None:
        self._records[record.name] = record
        self._splits[record.name] = record.split()
        self._note_mirrors()

    def _note_mirrors(self) -> None:
        self.mirrored = any(split.mirror for split in self._splits.values())

    @staticmethod
    def _record(data: dict[str, Any]) -> ExperimentRecord:
        return ExperimentRecord(
            parse_experiment(data["manifest"]), data["manifest"], data["created"]
        )
