//! Failure classes (WIT 0.1.8): why a device's update failed, as rollout
//! strategies weigh it — a failed flash says something about the image, a
//! flat battery says nothing.

/// Why a device's update failed (`types.failure-class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureClass {
    /// The image could not be fetched (network, storage, URL expired).
    Download,
    /// The image's digest or signature did not check out.
    Verification,
    /// The image does not fit the device (model, partition, hardware revision).
    Incompatible,
    /// Writing or booting the image failed.
    Flash,
    /// Battery, supply voltage or ignition: the vehicle, not the image.
    Power,
    /// The device (or its operator) declined the update.
    RejectedByDevice,
    /// No answer in time.
    Timeout,
    Other,
}

impl FailureClass {
    pub const ALL: [FailureClass; 8] = [
        FailureClass::Download,
        FailureClass::Verification,
        FailureClass::Incompatible,
        FailureClass::Flash,
        FailureClass::Power,
        FailureClass::RejectedByDevice,
        FailureClass::Timeout,
        FailureClass::Other,
    ];

    /// The class's name in the WIT and in configurations, e.g.
    /// `rejected-by-device`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Download => "download",
            FailureClass::Verification => "verification",
            FailureClass::Incompatible => "incompatible",
            FailureClass::Flash => "flash",
            FailureClass::Power => "power",
            FailureClass::RejectedByDevice => "rejected-by-device",
            FailureClass::Timeout => "timeout",
            FailureClass::Other => "other",
        }
    }

    /// The class named `name` (as [`as_str`](Self::as_str) gives it).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// Words that give a failure's class away, checked in this order (the most
/// specific first: "flash write failed: low battery" is about power).
const KEYWORDS: &[(FailureClass, &[&str])] = &[
    (
        FailureClass::Power,
        &[
            "battery",
            "voltage",
            "brownout",
            "brown-out",
            "ignition",
            "power",
        ],
    ),
    (
        FailureClass::Verification,
        &[
            "signature",
            "digest",
            "checksum",
            "sha256",
            "hash",
            "verif",
            "crc",
        ],
    ),
    (
        FailureClass::Incompatible,
        &[
            "incompatible",
            "wrong model",
            "not for this",
            "unsupported",
            "mismatch",
            "too large",
        ],
    ),
    (
        FailureClass::RejectedByDevice,
        &["rejected", "declined", "denied", "refused"],
    ),
    (
        FailureClass::Download,
        &[
            "download",
            "http",
            "fetch",
            "network",
            "connection",
            "url",
            "dns",
            "tls",
        ],
    ),
    (FailureClass::Timeout, &["timeout", "timed out"]),
    (
        FailureClass::Flash,
        &[
            "flash", "write", "erase", "boot", "rollback", "slot", "program",
        ],
    ),
];

/// The standard classification of a device's error text: a leading class
/// name (`flash: write failed at 0x08004000`, `power: battery at 11.2 V`)
/// says it; otherwise the first class in [`KEYWORDS`] whose word the text
/// contains; otherwise `other`.
pub fn classify(error: &str) -> FailureClass {
    let lower = error.trim().to_ascii_lowercase();
    if let Some((head, _)) = lower.split_once(':')
        && let Some(class) = FailureClass::parse(head.trim())
    {
        return class;
    }
    KEYWORDS
        .iter()
        .find(|(_, words)| words.iter().any(|w| lower.contains(w)))
        .map_or(FailureClass::Other, |(class, _)| *class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_class_name_says_it() {
        assert_eq!(
            classify("flash: write failed at 0x08004000"),
            FailureClass::Flash
        );
        assert_eq!(classify("Power: battery at 11.2 V"), FailureClass::Power);
        assert_eq!(
            classify("rejected-by-device: driver declined"),
            FailureClass::RejectedByDevice
        );
        assert_eq!(classify("other: checksum"), FailureClass::Other);
    }

    #[test]
    fn words_give_the_class_away() {
        assert_eq!(
            classify("HTTP 403 while downloading"),
            FailureClass::Download
        );
        assert_eq!(classify("sha256 mismatch"), FailureClass::Verification);
        assert_eq!(
            classify("flash write failed: low battery"),
            FailureClass::Power
        );
        assert_eq!(
            classify("image is for esp32s3, incompatible"),
            FailureClass::Incompatible
        );
        assert_eq!(classify("erase failed"), FailureClass::Flash);
        assert_eq!(classify("no answer: timed out"), FailureClass::Timeout);
        assert_eq!(classify("E42"), FailureClass::Other);
    }

    #[test]
    fn every_class_has_its_name() {
        for class in FailureClass::ALL {
            assert_eq!(FailureClass::parse(class.as_str()), Some(class));
        }
    }
}
