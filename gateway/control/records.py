"""What the registry keeps per InferenceService, its settings, and the view its status shows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from gateway.core.domain import SIZE_MULTIPLIER, ModelSpec, ModelStatus
from gateway.kserve.serving_runtimes import RuntimeRecord


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    size_multiplier: float = SIZE_MULTIPLIER  # predicted size = bytes on disk x this
    default_model_size: int = 1 << 20  # bytes predicted when the file is not there yet
    # After a rollout moves the name, requests routed to the old version a
    # moment before may still be on their way to its pod: unload it after this.
    rollout_grace: float = 2.0
    rollout_check: float = 2.0  # seconds between looks for unfinished rollouts nobody is doing


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    manifest: dict[str, Any]
    created: float  # unix time
    serving: ModelSpec  # the concrete model the name routes to
    target: ModelSpec  # the concrete model of the latest spec
    # Counts the record's writes: a replica's mirror that brings back an older write of a
    # record it has since written again (its own echo, late) leaves the newer one.
    version: int = 0
    # The predictor (as applied) of the spec rolled out now, and of the one before it:
    # what `mmgw rollout undo` goes back to. None: not known (stored before they were kept).
    rolled_out: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None

    def rolled_out_to_target(self) -> Record:
        """This record once its target serves: the rolled-out predictor becomes the previous."""
        return replace(
            self,
            serving=self.target,
            previous=self.rolled_out,
            rolled_out=predictor_of(self.manifest),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "created": self.created,
            "serving": asdict(self.serving),
            "target": asdict(self.target),
            "version": self.version,
            "rolled_out": self.rolled_out,
            "previous": self.previous,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> Record:
        return cls(
            name,
            data["manifest"],
            data["created"],
            ModelSpec(**data["serving"]),
            ModelSpec(**data["target"]),
            data.get("version", 0),  # records stored before versions were counted
            data.get("rolled_out"),
            data.get("previous"),
        )


def predictor_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """An InferenceService manifest's predictor as applied, without its canary percent."""
    predictor = dict(manifest.get("spec", {}).get("predictor", {}))
    predictor.pop("canaryTrafficPercent", None)
    return predictor


@dataclass(frozen=True, slots=True)
class ServingView:
    """An InferenceService as its status shows it: ``problem`` (reason, message) when it
    cannot be served as specified, else the states of the models it serves and targets."""

    record: Record
    runtime: RuntimeRecord | None
    problem: tuple[str, str] | None
    serving: ModelStatus | None = None
    target: ModelStatus | None = None
    runtime_up: bool = False  # a pod of its runtime that serves its format is up
    # the latest's share of requests now while a canary holds the rollout (Registry.canary)
    canary_share: int | None = None
