//! Newtype identifiers, so a node name is never passed where a job id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// Wraps a string.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }
    };
}

id_type!(
    /// A node's name, unique in the fleet (`lab-a-r12-n3`).
    NodeId
);
id_type!(
    /// A release's name, unique (`r550-u3`).
    ReleaseId
);
id_type!(
    /// A run's id (`run-` followed by random hex).
    RunId
);
id_type!(
    /// A job's id (`job-` followed by random hex).
    JobId
);
id_type!(
    /// A rollout's id (`rollout-` followed by random hex).
    RolloutId
);
id_type!(
    /// A plan version: the hex sha256 of the plan's canonical form.
    PlanVersion
);
