//! Test fixture: a rollout plugin built against `rollway:plugin@0.2.0`.

wit_bindgen::generate!({
    inline: r#"
        package rollway:plugin@0.2.0;

        interface rollout {
            validate-config: func(config: string) -> result<_, string>;
        }

        world rollout-strategy {
            export rollout;
        }
    "#,
});

struct Future;

impl exports::rollway::plugin::rollout::Guest for Future {
    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
export!(Future);
