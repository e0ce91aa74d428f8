"""envoy.yaml spells the REST form header where four parts read it (the Lua filter that sets
it, ext_proc's forward rules, the route to the pods' REST listeners, the transcoder's skip
matcher): each must be gateway.core.protocol's name and value."""

from __future__ import annotations

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
        r for r in source.routes if r.get("route", {}).get("cluster") == PODS_REST_CLUSTER
    ]
    assert oip_route["match"]["headers"] == [{"name": name, "string_match": {"exact": value}}]
    matcher = source.http_filter(TRANSCODER)["typed_config"]["xds_matcher"]["matcher_list"]
    predicate = matcher["matchers"][0]["predicate"]["single_predicate"]
    assert predicate["input"]["typed_config"]["header_name"] == name
    assert predicate["value_match"] == {"exact": value}
