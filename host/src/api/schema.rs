//! Schemas of the OpenAPI document that the derive macros cannot state:
//! values whose rules span keys and values.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::{PartialSchema, ToSchema};

use crate::domain::Tags;

/// Device tags: at most [`Tags::MAX_TAGS`] string keys of 1 to 64
/// characters, values of at most 256.
pub fn tags() -> RefOr<Schema> {
    let key = ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .min_length(Some(1))
        .max_length(Some(Tags::MAX_KEY))
        .pattern(Some("^[^\\x00]*$"));
    let value = ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .max_length(Some(Tags::MAX_VALUE))
        .pattern(Some("^[^\\x00]*$"));
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::Object))
        .description(Some(
            "Labels, e.g. `{\"site\": \"north\", \"ring\": \"1\"}`",
        ))
        .max_properties(Some(Tags::MAX_TAGS))
        .property_names(Some(key))
        .additional_properties(Some(value))
        .into()
}

/// A device id: 1 to 64 ASCII letters, digits, `-_.:`.
fn device_id() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .min_length(Some(1))
        .max_length(Some(crate::domain::DeviceId::MAX_LEN))
        .pattern(Some("^[A-Za-z0-9._:-]+$"))
}

/// The device ids a job targets: 1 to 100,000, each once.
pub fn device_ids() -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(device_id())
        .min_items(Some(1))
        .max_items(Some(crate::jobs::MAX_TARGET_IDS))
        .unique_items(true)
        .into()
}

/// One `T`, or an array of 1 to `max` of them.
pub fn one_or_many<T: ToSchema + PartialSchema>(max: usize) -> RefOr<Schema> {
    let one = utoipa::openapi::Ref::from_schema_name(T::name());
    OneOfBuilder::new()
        .item(one.clone())
        .item(
            ArrayBuilder::new()
                .items(one)
                .min_items(Some(1))
                .max_items(Some(max)),
        )
        .into()
}
