//! Unit tests of the function operations.

use super::*;

#[test]
fn local_references_follow_the_schema_into_components() {
    let schema = json!({
        "$id": "https://example.com/s.json",
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/point"}, "q": {"$ref": "https://x/y"}},
        "$defs": {"point": {"type": "array", "items": [{"$ref": "#"}]}},
    });
    let moved = relocated(&schema, "demo.f.input");
    assert!(moved.get("$id").is_none());
    assert_eq!(
        moved["properties"]["p"]["$ref"],
        "#/components/schemas/demo.f.input/$defs/point"
    );
    assert_eq!(moved["properties"]["q"]["$ref"], "https://x/y");
    assert_eq!(
        moved["$defs"]["point"]["items"][0]["$ref"],
        "#/components/schemas/demo.f.input"
    );
}

#[test]
fn query_arguments_come_from_the_schema_s_properties() {
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string", "description": "who"}, "times": {"type": "integer"}, "size": {}},
        "required": ["name"],
    });
    let parameters = query_arguments(Some(&schema), &["size"]);
    let names: Vec<&str> = parameters
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["name", "times"]);
    assert_eq!(parameters[0]["required"], true);
    assert_eq!(parameters[0]["description"], "who");
    assert_eq!(parameters[1]["schema"]["type"], "integer");
    let free = query_arguments(None, &[]);
    assert_eq!(free[0]["style"], "form");
    assert_eq!(free[0]["schema"]["type"], "object");
}
