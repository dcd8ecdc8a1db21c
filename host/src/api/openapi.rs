//! The OpenAPI document as the API answers.
//!
//! The handlers' annotations (utoipa) say what each operation does and
//! returns when it succeeds; [`complete`] adds what every operation shares,
//! from what the annotations already state: each refusal it can give, as
//! `application/problem+json` (RFC 9457) with the problem schema and the
//! headers that come with it. A secured operation can answer 401 and 429
//! (failed authentications are throttled), 403 when it needs more than the
//! viewer role; one with path parameters 404 and 422; one with query
//! parameters 422; one with a body 408 (stalled), 413, 415 and, for JSON,
//! 400 and 422; every one 500 and 503 (the database is busy). Binary
//! bodies are described as binary strings.

use serde_json::{Map, Value, json};

use super::access::BEARER;

const PROBLEM: &str = "application/problem+json";

/// A string of any characters but NUL, which no text of Rollway's can hold.
const NO_NUL: &str = "^[^\\x00]*$";

/// Adds the shared responses, content types and headers to every
/// operation under `/api/v1`, and says of every input string without a
/// pattern of its own that it holds no NUL.
pub fn complete(document: &mut Value) {
    if let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for schema in schemas.values_mut() {
            no_nul(schema);
        }
    }
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in operations.iter_mut() {
            if !matches!(method.as_str(), "get" | "post" | "put" | "patch" | "delete") {
                continue;
            }
            complete_operation(path, operation);
            // (`pointer_mut`, not indexing: indexing a missing key adds it.)
            if let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            {
                for schema in parameters.iter_mut().filter_map(|p| p.get_mut("schema")) {
                    no_nul(schema);
                }
            }
            if let Some(content) = operation
                .pointer_mut("/requestBody/content")
                .and_then(Value::as_object_mut)
            {
                for schema in content.values_mut().filter_map(|m| m.get_mut("schema")) {
                    no_nul(schema);
                }
            }
        }
    }
}

fn complete_operation(path: &str, operation: &mut Value) {
    let parameters = operation["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has = |place: &str| parameters.iter().any(|p| p["in"] == place);
    let (path_params, query_params) = (has("path"), has("query"));
    let body_types: Vec<String> = operation["requestBody"]["content"]
        .as_object()
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    let json_body = body_types.iter().any(|t| t.ends_with("json"));
    let role = operation["security"].as_array().and_then(|requirements| {
        requirements
            .iter()
            .find_map(|r| r[BEARER].as_array()?.first()?.as_str().map(str::to_owned))
    });

    binary_bodies(operation);
    let responses = operation["responses"]
        .as_object_mut()
        .expect("every operation documents its responses");
    // Refusals the annotations named, in the problem content type.
    for (status, response) in responses.iter_mut() {
        if status.as_str() >= "400" {
            as_problem(response);
        }
    }
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status)
            .or_insert_with(|| json!({ "description": description }));
        if let Some(response) = responses.get_mut(status) {
            as_problem(response);
        }
    };
    if let Some(role) = &role {
        add(
            "401",
            "No bearer token, or one that is unknown, revoked or expired",
        );
        add(
            "429",
            "Too many failed authentications from this address; retry after the time given",
        );
        if role != "viewer" {
            add("403", &format!("The token's role is below {role}"));
        }
    }
    if path_params {
        add("404", "No such resource");
    }
    if path_params || query_params || json_body {
        add(
            "422",
            "A parameter or the body is invalid; `errors` names each field",
        );
    }
    if !body_types.is_empty() {
        add(
            "408",
            "The request body stalled past ROLLWAY_HTTP_BODY_TIMEOUT",
        );
        add("413", "The request body is larger than allowed");
        add(
            "415",
            &format!("The body is not {}", body_types.join(" or ")),
        );
    }
    if json_body {
        add("400", "The body is not well-formed JSON");
    }
    add("500", "The server failed; the incident was logged");
    add("503", "A dependency (the database) is busy or down; retry");
    headers(path, responses);
}

/// Gives every string schema within `schema` without a pattern, format or
/// enum the pattern [`NO_NUL`], and every map its key's.
fn no_nul(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            let is_string = match &object.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
                _ => false,
            };
            let free = ["pattern", "format", "enum", "const"]
                .iter()
                .all(|k| !object.contains_key(*k));
            if is_string && free {
                object.insert("pattern".into(), json!(NO_NUL));
            }
            if object.contains_key("additionalProperties") && !object.contains_key("propertyNames")
            {
                object.insert("propertyNames".into(), json!({ "pattern": NO_NUL }));
            }
            for (key, value) in object.iter_mut() {
                if key != "example" && key != "examples" && key != "default" {
                    no_nul(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(no_nul),
        _ => {}
    }
}

/// A response as a problem document, keeping its description.
fn as_problem(response: &mut Value) {
    let schema = json!({ "$ref": "#/components/schemas/Problem" });
    let content = response
        .as_object_mut()
        .map(|r| r.entry("content").or_insert_with(|| json!({})));
    if let Some(Value::Object(content)) = content {
        content.remove("application/json");
        content.insert(PROBLEM.to_owned(), json!({ "schema": schema }));
    }
}

/// The headers that come with some answers.
fn headers(path: &str, responses: &mut Map<String, Value>) {
    let header = |description: &str| json!({ "description": description, "required": true, "schema": { "type": "string" } });
    let mut set = |status: &str, name: &str, description: &str| {
        if let Some(response) = responses.get_mut(status).and_then(Value::as_object_mut) {
            let headers = response.entry("headers").or_insert_with(|| json!({}));
            headers[name] = header(description);
        }
    };
    set(
        "401",
        "WWW-Authenticate",
        "The scheme to authenticate with: Bearer",
    );
    set("429", "Retry-After", "Seconds to wait");
    if path.ends_with("/download") {
        set(
            "416",
            "Content-Range",
            "`bytes */SIZE`: the size of the image",
        );
    }
}

/// Binary request and response bodies are strings of bytes, not arrays of
/// numbers.
fn binary_bodies(operation: &mut Value) {
    let binary = json!({ "type": "string", "format": "binary" });
    let mut contents: Vec<(&String, &mut Value)> = Vec::new();
    let (body, responses) = match operation.as_object_mut() {
        Some(operation) => {
            let mut body = None;
            let mut responses = None;
            for (key, value) in operation.iter_mut() {
                match key.as_str() {
                    "requestBody" => body = Some(value),
                    "responses" => responses = Some(value),
                    _ => {}
                }
            }
            (body, responses)
        }
        None => return,
    };
    if let Some(content) = body
        .and_then(|b| b.get_mut("content"))
        .and_then(Value::as_object_mut)
    {
        contents.extend(content.iter_mut());
    }
    if let Some(responses) = responses.and_then(Value::as_object_mut) {
        for response in responses.values_mut() {
            if let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) {
                contents.extend(content.iter_mut());
            }
        }
    }
    for (content_type, media) in contents {
        let bytes = !content_type.ends_with("json")
            && media.pointer("/schema/type") == Some(&json!("array"))
            && media.pointer("/schema/items/type") == Some(&json!("integer"));
        if bytes && let Some(media) = media.as_object_mut() {
            media.insert("schema".into(), binary.clone());
        }
    }
}
