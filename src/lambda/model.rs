//! The two execution models an extension can find itself in: default
//! Lambda (one invocation at a time, INVOKE events, frozen between them) and
//! Lambda Managed Instances (SHUTDOWN only, never frozen, many invocations at
//! once). docs/managed-instances.md.

/// `AWS_LAMBDA_INITIALIZATION_TYPE`'s value on Lambda Managed Instances.
const MANAGED_INSTANCES: &str = "lambda-managed-instances";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Default,
    ManagedInstances,
}

impl Model {
    /// The model `AWS_LAMBDA_INITIALIZATION_TYPE` names (default Lambda when
    /// it names none: a refused INVOKE registration still reveals LMI).
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Model {
        match get("AWS_LAMBDA_INITIALIZATION_TYPE") {
            Some(v) if v.trim().eq_ignore_ascii_case(MANAGED_INSTANCES) => Model::ManagedInstances,
            _ => Model::Default,
        }
    }

    /// The register call's body: LMI accepts SHUTDOWN only.
    pub fn register_body(self) -> &'static [u8] {
        match self {
            Model::Default => br#"{"events":["INVOKE","SHUTDOWN"]}"#,
            Model::ManagedInstances => br#"{"events":["SHUTDOWN"]}"#,
        }
    }

    /// The Telemetry API schema version subscribed with unless configured:
    /// LMI accepts only 2025-01-29.
    pub fn schema_version(self) -> &'static str {
        match self {
            Model::Default => SCHEMA_2022,
            Model::ManagedInstances => SCHEMA_2025,
        }
    }
}

pub const SCHEMA_2022: &str = "2022-12-13";
pub const SCHEMA_2025: &str = "2025-01-29";

/// The other schema version, tried once when one is refused.
pub fn other_schema(version: &str) -> &'static str {
    if version == SCHEMA_2025 {
        SCHEMA_2022
    } else {
        SCHEMA_2025
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_from_the_initialization_type() {
        let lmi = |_: &str| Some("lambda-managed-instances".to_string());
        assert_eq!(Model::from_env(&lmi), Model::ManagedInstances);
        let od = |_: &str| Some("on-demand".to_string());
        assert_eq!(Model::from_env(&od), Model::Default);
        assert_eq!(Model::from_env(&|_| None), Model::Default);
        assert_eq!(
            Model::ManagedInstances.register_body(),
            br#"{"events":["SHUTDOWN"]}"#
        );
        assert_eq!(Model::ManagedInstances.schema_version(), "2025-01-29");
        assert_eq!(other_schema("2025-01-29"), "2022-12-13");
        assert_eq!(other_schema("2022-12-13"), "2025-01-29");
    }
}
