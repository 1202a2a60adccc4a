"""OpenAPI: Swagger UI at /, typed answers, documented errors, working examples, /v1 health routes."""
from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from kronos_serving.openapi import ERRORS
from kronos_serving.schemas import BatchResponse, ErrorBody, SingleResponse
from local_server import import_dev_model, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    tag = import_dev_model(home, "kronos-openapi")
    with running_server(home, {"KRONOS_MODEL": tag, "KRONOS_API_KEYS": "secret-key"},
                        tmp_path_factory.mktemp("logs") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def document(server):
    response = httpx.get(server.url + "/docs.json")
    assert response.status_code == 200
    return response.json()


def json_schema(node):
    """OpenAPI 3.0's ``nullable: true`` in JSON Schema terms (jsonschema ignores ``nullable``)."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


def resolve(document: dict, schema: dict) -> dict:
    """The schema with every #/components/schemas reference resolvable (for jsonschema)."""
    return json_schema({**schema, "components": document["components"]})


def test_optional_fields_are_nullable_in_openapi_3_0_terms_and_null_is_accepted(server, document):
    assert document["openapi"].startswith("3.0")
    assert '{"type": "null"}' not in json.dumps(document)  # not a 3.0 type
    single = document["paths"]["/v1/predict/single"]["post"]["requestBody"]["content"]["application/json"]
    properties = single["schema"]["properties"]
    for name in ("timestamps", "future_timestamps", "pred_len", "quantiles", "seed"):
        assert properties[name]["nullable"] is True, name
    assert "nullable" not in properties["data"]  # required
    component = document["components"]["schemas"]["SingleRequest"]["properties"]
    assert component["timestamps"] == {**component["timestamps"], "type": "array", "nullable": True}
    assert document["components"]["schemas"]["ErrorBody"]["properties"]["field"]["nullable"] is True
    body = {"data": [[1, 2, 0.5, 1.5]] * 3, "timestamps": None, "future_timestamps": None, "pred_len": None}
    headers = {"Authorization": "Bearer secret-key"}
    for path, payload in (("/v1/predict/single", body), ("/v1/predict/batch", {"batch": [body]})):
        response = httpx.post(server.url + path, json=payload, headers=headers, timeout=60)
        assert response.status_code == 200, response.text


def test_swagger_ui_is_served_at_the_root_and_loads_the_document(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'id="swagger-ui"' in page.text
    initializer = httpx.get(server.url + "/static_content/swagger-initializer.js")
    assert initializer.status_code == 200 and "docs.json" in initializer.text
    assert httpx.get(server.url + "/static_content/swagger-ui-bundle.js").status_code == 200


def test_forecast_routes_have_typed_answers_and_every_error_documented(document):
    for path, model in (("/v1/predict/single", SingleResponse), ("/v1/predict/batch", BatchResponse)):
        responses = document["paths"][path]["post"]["responses"]
        schema = responses["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model.__name__}"}
        for code in (400, 401, 413, 415, 429, 503, 504):
            assert code in ERRORS
            error = responses[str(code)]
            assert error["description"]
            assert error["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert document["paths"]["/v1/predict/single"]["post"]["security"]  # keys are on here
    assert set(document["components"]["securitySchemes"]) == {"bearer", "api_key"}
    point = document["components"]["schemas"]["ForecastPoint"]
    assert {"timestamp", "open", "high", "low", "close", "volume", "amount"} <= set(point["required"])


def test_health_routes_are_listed(document):
    for path in ("/v1/healthz", "/v1/readyz", "/v1/metrics"):
        assert document["paths"][path]["get"]["responses"]["200"]["description"]
    assert "503" in document["paths"]["/v1/readyz"]["get"]["responses"]


def test_the_documented_examples_work_and_answers_match_the_schemas(server, document):
    headers = {"Authorization": "Bearer secret-key"}
    for path in ("/v1/predict/single", "/v1/predict/batch"):
        operation = document["paths"][path]["post"]
        examples = operation["requestBody"]["content"]["application/json"]["examples"]
        assert examples
        ok_schema = resolve(document, operation["responses"]["200"]["content"]["application/json"]["schema"])
        for example in examples.values():
            response = httpx.post(server.url + path, json=example["value"], headers=headers, timeout=60)
            assert response.status_code == 200, response.text
            jsonschema.validate(response.json(), ok_schema)
    error_schema = resolve(document, {"$ref": "#/components/schemas/ErrorBody"})
    unauthorized = httpx.post(server.url + "/v1/predict/single", json={"data": []})
    bad = httpx.post(server.url + "/v1/predict/single", json={"data": [[1, 2, 3]]}, headers=headers)
    not_json = httpx.post(server.url + "/v1/predict/single", content=b"x", headers={
        **headers, "Content-Type": "text/plain"})
    for response, status in ((unauthorized, 401), (bad, 400), (not_json, 415)):
        assert response.status_code == status
        jsonschema.validate(response.json(), error_schema)
        ErrorBody.model_validate(response.json())


def test_without_api_keys_the_document_requires_no_security(document):
    import copy

    from kronos_serving.openapi import complete

    bare = copy.deepcopy(document)
    bare["components"].pop("securitySchemes")
    for path in ("/v1/predict/single", "/v1/predict/batch"):
        bare["paths"][path]["post"].pop("security")
    plain = complete(bare, secured=False)
    assert "security" not in plain["paths"]["/v1/predict/single"]["post"]
    assert "securitySchemes" not in plain["components"]
