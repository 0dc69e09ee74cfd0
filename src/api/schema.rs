//! Schema helpers for fields the CRD keeps as free-form objects.

use schemars::{json_schema, Schema, SchemaGenerator};

/// An object the apiserver stores as written (e.g. Istio's corsPolicy).
pub fn preserve_unknown_fields(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
