//! Host bindings generated from `wit/plugin.wit`, one module per world.

/// The `rollout-strategy` world.
pub mod rollout {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "rollout-strategy",
    });
}

/// The `rollout-strategy-rules` world (0.1.8). Its imports are the rollout
/// module's, so the host implements them once.
pub mod strategy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "rollout-strategy-rules",
        with: {
            "rollway:plugin/types": super::rollout::rollway::plugin::types,
            "rollway:plugin/log": super::rollout::rollway::plugin::log,
        },
    });
}

/// The `device-protocol` world; the `image` resource is backed by
/// [`super::runtime::ImageHandle`]. The interfaces both worlds import
/// (`types`, `log`) are the rollout module's, so the host implements them once.
pub mod device {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "device-protocol",
        with: {
            "rollway:plugin/types": super::rollout::rollway::plugin::types,
            "rollway:plugin/log": super::rollout::rollway::plugin::log,
            "rollway:plugin/image.image": crate::plugins::runtime::ImageHandle,
        },
    });
}
