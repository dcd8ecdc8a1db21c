//! The device-protocol side: a typed trait for device families and the
//! `device_plugin!` macro that exports one as a component.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cancel::CancelRequest;
use crate::command::Request;
use crate::image::Reader;
use crate::presence::Presence;
use crate::status::Status;

/// An image as a plugin reads it: `read_at`, or `std::io::Read + Seek`.
pub type Image<'a> = Reader<Box<dyn FnMut(u64, u32) -> Result<Vec<u8>, String> + 'a>>;

/// What a valid image told about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageFacts {
    pub version: Option<String>,
    /// Chip or board the image is built for.
    pub target: Option<String>,
    /// The image's anti-rollback counter, when its format carries one
    /// (`inspect.image-facts`, WIT 0.1.6; for hosts before it, the macro
    /// also gives it as the `security_counter` detail).
    pub security_counter: Option<u64>,
    pub details: Vec<(String, String)>,
}

impl ImageFacts {
    /// The details with the security counter among them, for
    /// `device.validate-image` (hosts before WIT 0.1.6 read it there).
    pub fn details_with_counter(&self) -> Vec<(String, String)> {
        let mut details = self.details.clone();
        if let Some(counter) = self.security_counter {
            details.retain(|(key, _)| key != "security_counter");
            details.push(("security_counter".into(), counter.to_string()));
        }
        details
    }
}

/// An MQTT command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Relative to the host's topic prefix.
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
}

/// A device family with a typed configuration. Only `validate_image` is
/// required: commands and statuses default to Rollway's standard JSON
/// messages (see [`crate::command`] and [`crate::status`]).
pub trait DeviceFamily {
    type Config: DeserializeOwned;

    /// The families this plugin speaks for.
    const FAMILIES: &'static [&'static str];

    /// A JSON Schema of [`Config`](Self::Config), the family's settings
    /// (`settings.config-schema`, WIT 0.1.7): the host checks an admin's
    /// settings against it first and the dashboard draws a form from it.
    const CONFIG_SCHEMA: Option<&'static str> = None;

    /// Rules serde cannot express.
    fn check(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Validates an uploaded image and extracts what it can.
    fn validate_image(config: &Self::Config, image: &mut Image<'_>) -> Result<ImageFacts, String>;

    /// Family-specific fields merged into the standard command payload.
    fn command_fields(_config: &Self::Config, _request: &Request) -> Result<Value, String> {
        Ok(json!({}))
    }

    /// The command for one device: by default the standard payload on the
    /// device's (or its gateway's) topic at QoS 1, refused when the image
    /// is built for another chip than the device's.
    fn build_command(config: &Self::Config, request: &Request) -> Result<Outgoing, String> {
        request.check_target()?;
        Ok(Outgoing {
            topic: request.topic(),
            payload: request.payload(Self::command_fields(config, request)?),
            qos: 1,
        })
    }

    /// Family-specific fields merged into the standard cancel payload.
    fn cancel_fields(_config: &Self::Config, _request: &CancelRequest) -> Result<Value, String> {
        Ok(json!({}))
    }

    /// The cancel for one device: by default the standard payload on the
    /// topic its update command came on, at QoS 1.
    fn build_cancel(config: &Self::Config, request: &CancelRequest) -> Result<Outgoing, String> {
        Ok(Outgoing {
            topic: request.topic(),
            payload: request.payload(Self::cancel_fields(config, request)?),
            qos: 1,
        })
    }

    /// Parses a status payload; by default the standard JSON message.
    fn parse_status(
        _config: &Self::Config,
        topic_device_id: &str,
        payload: &[u8],
    ) -> Result<Status, String> {
        crate::status::parse_json(topic_device_id, payload)
    }

    /// The class of a failure one of its devices reported (`failures.classify`,
    /// WIT 0.1.8); by default [`crate::failure::classify`]: a leading class
    /// name (`flash: …`), else telling words, else `other`.
    fn classify(_config: &Self::Config, error: &str) -> crate::failure::FailureClass {
        crate::failure::classify(error)
    }

    /// Parses a presence payload (a device, or a gateway and the devices
    /// behind it); by default the standard JSON message.
    fn parse_presence(
        _config: &Self::Config,
        topic_device_id: &str,
        payload: &[u8],
    ) -> Result<Vec<Presence>, String> {
        crate::presence::parse_json(topic_device_id, payload)
    }
}

/// Parses and checks a configuration for `F`.
pub fn load_config<F: DeviceFamily>(text: &str) -> Result<F::Config, String> {
    let config: F::Config = crate::config::parse(text)?;
    F::check(&config)?;
    Ok(config)
}

/// Exports a [`DeviceFamily`] as the plugin's component. Invoke it at the
/// crate root after
/// `wit_bindgen::generate!({ world: "device-protocol-attempts", .. })`: the
/// component exports `device`, `attempts` (statuses name their attempt),
/// `batch` (many statuses or commands in one call, each parsed or built as
/// alone, the configuration read once), `presence` (what devices say
/// about themselves when they connect), `control` (every state a
/// device reports: `waiting` and `cancelled` too, with their reason),
/// `cancels` (telling devices to stop an update that was cancelled),
/// `inspect` (an image's security counter in a field of its own) and
/// `settings` (the JSON Schema of its settings, when it gives one).
#[macro_export]
macro_rules! device_plugin {
    ($family:ty, name: $name:expr, description: $description:expr $(,)?) => {
        $crate::device_conversions!();

        struct RollwayDeviceGuest;

        impl exports::rollway::plugin::device::Guest for RollwayDeviceGuest {
            fn info() -> rollway::plugin::types::PluginInfo {
                rollway::plugin::types::PluginInfo {
                    name: ($name).into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    description: ($description).into(),
                }
            }

            fn families() -> Vec<String> {
                <$family as $crate::device::DeviceFamily>::FAMILIES
                    .iter()
                    .map(|f| (*f).to_owned())
                    .collect()
            }

            fn validate_config(config: String) -> Result<(), String> {
                $crate::device::load_config::<$family>(&config).map(|_| ())
            }

            fn validate_image(
                config: String,
                image: &rollway::plugin::image::Image,
            ) -> Result<exports::rollway::plugin::device::ImageInfo, String> {
                let facts = rollway_image_facts(&config, image)?;
                Ok(exports::rollway::plugin::device::ImageInfo {
                    details: facts.details_with_counter(),
                    version: facts.version,
                    target: facts.target,
                })
            }

            fn build_command(
                config: String,
                request: exports::rollway::plugin::device::CommandRequest,
            ) -> Result<exports::rollway::plugin::device::Command, String> {
                let config = $crate::device::load_config::<$family>(&config)?;
                rollway_build_one(&config, &request)
            }

            fn parse_status(
                config: String,
                topic_device_id: String,
                payload: Vec<u8>,
            ) -> Result<exports::rollway::plugin::device::StatusReport, String> {
                <RollwayDeviceGuest as exports::rollway::plugin::attempts::Guest>::parse_status_attempt(
                    config,
                    topic_device_id,
                    payload,
                )
                .map(|(report, _attempt)| report)
            }
        }

        /// One status, parsed with a configuration already read.
        fn rollway_parse_one(
            config: &<$family as $crate::device::DeviceFamily>::Config,
            topic_device_id: &str,
            payload: &[u8],
        ) -> Result<(exports::rollway::plugin::device::StatusReport, Option<u32>), String> {
            <$family as $crate::device::DeviceFamily>::parse_status(config, topic_device_id, payload)
                .map(|status| {
                    let attempt = status.attempt;
                    (to_report(status), attempt)
                })
        }

        /// One command, built with a configuration already read.
        fn rollway_build_one(
            config: &<$family as $crate::device::DeviceFamily>::Config,
            request: &exports::rollway::plugin::device::CommandRequest,
        ) -> Result<exports::rollway::plugin::device::Command, String> {
            <$family as $crate::device::DeviceFamily>::build_command(config, &to_request(request))
                .map(|out| exports::rollway::plugin::device::Command {
                    topic: out.topic,
                    payload: out.payload,
                    qos: out.qos,
                })
        }

        impl exports::rollway::plugin::settings::Guest for RollwayDeviceGuest {
            fn config_schema() -> Option<String> {
                <$family as $crate::device::DeviceFamily>::CONFIG_SCHEMA.map(str::to_owned)
            }
        }

        impl exports::rollway::plugin::attempts::Guest for RollwayDeviceGuest {
            fn parse_status_attempt(
                config: String,
                topic_device_id: String,
                payload: Vec<u8>,
            ) -> Result<(exports::rollway::plugin::device::StatusReport, Option<u32>), String> {
                let config = $crate::device::load_config::<$family>(&config)?;
                rollway_parse_one(&config, &topic_device_id, &payload)
            }
        }

        impl exports::rollway::plugin::batch::Guest for RollwayDeviceGuest {
            fn parse_statuses(
                config: String,
                statuses: Vec<(String, Vec<u8>)>,
            ) -> Vec<Result<(exports::rollway::plugin::device::StatusReport, Option<u32>), String>> {
                match $crate::device::load_config::<$family>(&config) {
                    Ok(config) => statuses
                        .iter()
                        .map(|(topic_device_id, payload)| {
                            rollway_parse_one(&config, topic_device_id, payload)
                        })
                        .collect(),
                    Err(reason) => statuses.iter().map(|_| Err(reason.clone())).collect(),
                }
            }

            fn build_commands(
                config: String,
                requests: Vec<exports::rollway::plugin::device::CommandRequest>,
            ) -> Vec<Result<exports::rollway::plugin::device::Command, String>> {
                match $crate::device::load_config::<$family>(&config) {
                    Ok(config) => requests
                        .iter()
                        .map(|request| rollway_build_one(&config, request))
                        .collect(),
                    Err(reason) => requests.iter().map(|_| Err(reason.clone())).collect(),
                }
            }
        }

        impl exports::rollway::plugin::presence::Guest for RollwayDeviceGuest {
            fn parse_presence(
                config: String,
                topic_device_id: String,
                payload: Vec<u8>,
            ) -> Result<Vec<exports::rollway::plugin::presence::DevicePresence>, String> {
                let config = $crate::device::load_config::<$family>(&config)?;
                <$family as $crate::device::DeviceFamily>::parse_presence(
                    &config,
                    &topic_device_id,
                    &payload,
                )
                .map(|devices| {
                    devices
                        .into_iter()
                        .map(|p| exports::rollway::plugin::presence::DevicePresence {
                            device_id: p.device_id,
                            online: p.online,
                            installed_version: p.installed_version,
                            security_counter: p.security_counter,
                            hardware: p.hardware,
                        })
                        .collect()
                })
            }
        }

        /// A status with every state, for `control`.
        fn to_full_report(s: $crate::status::Status) -> exports::rollway::plugin::control::Report {
            use exports::rollway::plugin::control::ReportState;
            use $crate::status::State;
            let state = match s.state {
                State::Init => ReportState::Init,
                State::Downloading => ReportState::Downloading,
                State::Waiting => ReportState::Waiting,
                State::Flashing => ReportState::Flashing,
                State::Rebooting => ReportState::Rebooting,
                State::Done => ReportState::Done,
                State::Error => ReportState::Error,
                State::Cancelled => ReportState::Cancelled,
            };
            let reason = s.reason.clone();
            let attempt = s.attempt;
            exports::rollway::plugin::control::Report {
                status: to_report(s),
                state,
                reason,
                attempt,
            }
        }

        impl exports::rollway::plugin::control::Guest for RollwayDeviceGuest {
            fn parse_reports(
                config: String,
                statuses: Vec<(String, Vec<u8>)>,
            ) -> Vec<Result<exports::rollway::plugin::control::Report, String>> {
                match $crate::device::load_config::<$family>(&config) {
                    Ok(config) => statuses
                        .iter()
                        .map(|(topic_device_id, payload)| {
                            <$family as $crate::device::DeviceFamily>::parse_status(
                                &config,
                                topic_device_id,
                                payload,
                            )
                            .map(to_full_report)
                        })
                        .collect(),
                    Err(reason) => statuses.iter().map(|_| Err(reason.clone())).collect(),
                }
            }
        }

        impl exports::rollway::plugin::cancels::Guest for RollwayDeviceGuest {
            fn build_cancels(
                config: String,
                requests: Vec<exports::rollway::plugin::cancels::CancelRequest>,
            ) -> Vec<Result<exports::rollway::plugin::device::Command, String>> {
                let config = match $crate::device::load_config::<$family>(&config) {
                    Ok(config) => config,
                    Err(reason) => return requests.iter().map(|_| Err(reason.clone())).collect(),
                };
                requests
                    .iter()
                    .map(|r| {
                        let request = $crate::cancel::CancelRequest {
                            device_id: r.device.id.clone(),
                            model: r.device.model.clone(),
                            gateway_id: r.device.gateway_id.clone(),
                            job_id: r.job_id.clone(),
                            execution_id: r.execution_id,
                            attempt: r.attempt,
                            manifest: r.manifest.clone(),
                            signature: r.signature.clone(),
                            key_id: r.key_id.clone(),
                        };
                        <$family as $crate::device::DeviceFamily>::build_cancel(&config, &request)
                            .map(|out| exports::rollway::plugin::device::Command {
                                topic: out.topic,
                                payload: out.payload,
                                qos: out.qos,
                            })
                    })
                    .collect()
            }
        }

        /// What the family's validator finds in an image, for
        /// `validate-image` and `inspect-image` alike.
        fn rollway_image_facts(
            config: &str,
            image: &rollway::plugin::image::Image,
        ) -> Result<$crate::device::ImageFacts, String> {
            let config = $crate::device::load_config::<$family>(config)?;
            let mut reader: $crate::device::Image<'_> = $crate::image::Reader::new(
                image.size(),
                Box::new(|offset, len| image.read(offset, len)),
            );
            <$family as $crate::device::DeviceFamily>::validate_image(&config, &mut reader)
        }

        impl exports::rollway::plugin::inspect::Guest for RollwayDeviceGuest {
            fn inspect_image(
                config: String,
                image: &rollway::plugin::image::Image,
            ) -> Result<exports::rollway::plugin::inspect::ImageFacts, String> {
                let facts = rollway_image_facts(&config, image)?;
                Ok(exports::rollway::plugin::inspect::ImageFacts {
                    version: facts.version,
                    target: facts.target,
                    security_counter: facts.security_counter,
                    details: facts.details,
                })
            }
        }

        impl exports::rollway::plugin::failures::Guest for RollwayDeviceGuest {
            fn classify(config: String, error: String) -> rollway::plugin::types::FailureClass {
                use rollway::plugin::types::FailureClass as C;
                use $crate::failure::FailureClass as F;
                let class = match $crate::device::load_config::<$family>(&config) {
                    Ok(config) => {
                        <$family as $crate::device::DeviceFamily>::classify(&config, &error)
                    }
                    Err(_) => $crate::failure::classify(&error),
                };
                match class {
                    F::Download => C::Download,
                    F::Verification => C::Verification,
                    F::Incompatible => C::Incompatible,
                    F::Flash => C::Flash,
                    F::Power => C::Power,
                    F::RejectedByDevice => C::RejectedByDevice,
                    F::Timeout => C::Timeout,
                    F::Other => C::Other,
                }
            }
        }

        // Exported only in the component build; native builds are for unit tests.
        #[cfg(target_arch = "wasm32")]
        export!(RollwayDeviceGuest);
    };
}
