//! Host bindings generated from `wit/plugin.wit`, one module per world.

/// The `rollout-strategy` world.
pub mod rollout {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "rollout-strategy",
    });
}

/// The `device-protocol` world; the `image` resource is backed by
/// [`super::runtime::ImageHandle`].
pub mod device {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "device-protocol",
        with: {
            "rollway:plugin/image.image": crate::plugins::runtime::ImageHandle,
        },
    });
}
