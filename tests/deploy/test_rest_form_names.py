"""envoy.yaml spells the REST form header where four parts read it (the Lua filter that sets
it, ext_proc's forward rules, the route to the pods' REST listeners, the transcoder's skip
matcher): each must be gateway.core.protocol's name and value."""

from __future__ import annotations

import re

from gateway.core import protocol
from gateway.tools.envoy_config import EXT_PROC, LUA, PODS_REST_CLUSTER, TRANSCODER, FilterConfig


def test_every_part_of_envoy_yaml_uses_the_protocols_header() -> None:
    source = FilterConfig()
    name, value = protocol.REST_FORM_HEADER, protocol.REST_FORM_OIP
    lua = source.http_filter(LUA)["typed_config"]["default_source_code"]["inline_string"]
    assert f'"{name}"' in lua and f'"{value}"' in lua
    allowed = source.http_filter(EXT_PROC)["typed_config"]["forward_rules"]["allowed_headers"]
    assert {"exact": name} in allowed["patterns"]
    (oip_route,) = [
        r
        for r in source.routes
        if r.get("route", {}).get("cluster") == PODS_REST_CLUSTER and "headers" in r["match"]
    ]
    assert oip_route["match"]["headers"] == [{"name": name, "string_match": {"exact": value}}]
    matcher = source.http_filter(TRANSCODER)["typed_config"]["xds_matcher"]["matcher_list"]
    predicate = matcher["matchers"][0]["predicate"]["single_predicate"]
    assert predicate["input"]["typed_config"]["header_name"] == name
    assert predicate["value_match"] == {"exact": value}


def test_openai_routes_json_to_metadata_and_ext_proc_agree_with_the_protocol() -> None:
    """The /v1 routes, the path json_to_metadata runs on, the metadata namespace it writes
    and the one ext_proc is sent are gateway.core.protocol's."""
    source = FilterConfig()
    routes = {r["match"].get("path") for r in source.routes if "route" in r}
    assert protocol.OPENAI_PATHS <= routes
    reader = source.http_filter("envoy.filters.http.json_to_metadata")["typed_config"]
    predicate = reader["xds_matcher"]["matcher_list"]["matchers"][0]["predicate"]
    regex = predicate["not_matcher"]["single_predicate"]["value_match"]["safe_regex"]["regex"]
    assert all(re.fullmatch(regex, path) for path in protocol.OPENAI_PATHS)
    assert not re.fullmatch(regex, "/v2/models/x/infer")
    (rule,) = reader["extension_config"]["typed_config"]["request_rules"]["rules"]
    assert rule["on_present"] == {"metadata_namespace": protocol.OPENAI_METADATA, "key": "model"}
    forwarded = source.http_filter(EXT_PROC)["typed_config"]["metadata_options"]
    assert forwarded["forwarding_namespaces"]["untyped"] == [protocol.OPENAI_METADATA]
