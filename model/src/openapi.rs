//! The OpenAPI schemas of the model types whose JSON form serde does not derive (a word or a
//! number; a number or null), with the `openapi` feature.

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::event::{ExpectedVersion, StreamVersion, Version};

impl PartialSchema for ExpectedVersion {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(["any", "no_stream", "stream_exists"])),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .description(Some("the stream's current version must be exactly this")),
            )
            .description(Some(
                "The optimistic-concurrency condition: any, no_stream, stream_exists, or the exact version of the stream's last event",
            ))
            .into()
    }
}

impl ToSchema for ExpectedVersion {}

impl PartialSchema for StreamVersion {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                Type::Integer,
                Type::Null,
            ]))
            .minimum(Some(0))
            .description(Some(
                "A stream's version (that of its last event), or null when it has no events",
            ))
            .into()
    }
}

impl ToSchema for StreamVersion {}

impl PartialSchema for Version {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(0))
            .description(Some(
                "The version of an event in its stream; the first is 0",
            ))
            .into()
    }
}

impl ToSchema for Version {}
