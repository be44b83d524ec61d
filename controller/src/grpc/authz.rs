//! The authorization table: every RPC of every manager service and the roles allowed to call
//! it, the one place that says who may do what. The interceptor (`auth.rs`) looks every call
//! up here before a handler runs; an RPC missing from the table is refused (deny by default),
//! and a test checks that every manager RPC in the proto descriptor has a row.
//!
//! A customer allowed an RPC sees only its own part of the answer: the handlers of those RPCs
//! scope lists, gets, decisions and reports to the nodes whose `customer` label is its own
//! (`auth::customer_of`), and a release only for other customers is to it a release that does
//! not exist: `NotFound` as for an unknown one, named in no answer (`load_release_for`,
//! `sees_release` and `unseen_releases` in `grpc/mod.rs`, over `access::sees_release`).
//! Anonymous calls (no token configured anywhere, loopback only) may call every RPC in the
//! table.
//!
//! Agents are not in this table: `AgentService` calls are made by nodes, which authenticate
//! by their enrolled certificate and may act only as the node it names (`auth::certified_node`).

use tollgate_domain::access::Role;

/// Who may call one RPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// The service, without the package: `NodeService`.
    pub service: &'static str,
    /// The method: `ListNodes`.
    pub method: &'static str,
    /// The roles allowed.
    pub roles: &'static [Role],
}

use tollgate_domain::access::Role::{Admin, Customer, Operator, ReleaseManager, Viewer};

/// Reads anyone may make, a customer over its own nodes only.
const READ_OWN: &[Role] = &[Viewer, Operator, ReleaseManager, Admin, Customer];
/// Reads that are not about customers' nodes, or not scoped yet: no customer.
const READ: &[Role] = &[Viewer, Operator, ReleaseManager, Admin];
/// Node and run operations.
const OPERATE: &[Role] = &[Operator, Admin];
/// Plans, gates, waivers, releases and their promotions: a plan runs code on the fleet.
const RELEASE: &[Role] = &[ReleaseManager, Admin];
/// API tokens, enrollment and node certificates.
const ADMIN: &[Role] = &[Admin];

/// Builds a row.
const fn row(service: &'static str, method: &'static str, roles: &'static [Role]) -> Row {
    Row {
        service,
        method,
        roles,
    }
}

/// Every manager RPC and who may call it. README.md's "Authorization" section holds this
/// table as Markdown (a test keeps them equal).
pub const TABLE: &[Row] = &[
    row("NodeService", "ListNodes", READ_OWN),
    row("NodeService", "GetNode", READ_OWN),
    row("NodeService", "SetCordon", OPERATE),
    row("NodeService", "SetHealth", OPERATE),
    row("NodeService", "DrainNode", OPERATE),
    row("NodeService", "RetireNode", OPERATE),
    row("NodeService", "EnrollNode", ADMIN),
    row("NodeService", "RevokeNode", ADMIN),
    row("NodeService", "AddMaintenanceWindow", OPERATE),
    row("NodeService", "ListMaintenanceWindows", READ),
    row("NodeService", "EndMaintenanceWindow", OPERATE),
    row("NodeService", "SetHealthPlan", OPERATE),
    row("NodeService", "ListHealthPlans", READ),
    row("NodeService", "RemoveHealthPlan", OPERATE),
    row("NodeService", "GetNodeTelemetry", READ_OWN),
    row("ReleaseService", "CreateRelease", RELEASE),
    row("ReleaseService", "GetRelease", READ_OWN),
    row("ReleaseService", "ListReleases", READ_OWN),
    row("ReleaseService", "Promote", RELEASE),
    row("ReleaseService", "Demote", RELEASE),
    row("ReleaseService", "Halt", RELEASE),
    row("ReleaseService", "Resume", RELEASE),
    row("ReleaseService", "SetMilestoneTarget", RELEASE),
    row("ReleaseService", "SetCustomers", RELEASE),
    row("PlanService", "ApplyPlan", RELEASE),
    row("PlanService", "GetPlan", READ),
    row("PlanService", "ListPlans", READ),
    row("RolloutService", "StartRollout", RELEASE),
    row("RolloutService", "GetRollout", READ_OWN),
    row("RolloutService", "ListRollouts", READ_OWN),
    row("RolloutService", "WatchRollout", READ_OWN),
    row("RolloutService", "PauseRollout", RELEASE),
    row("RolloutService", "ResumeRollout", RELEASE),
    row("RolloutService", "AbortRollout", RELEASE),
    row("RolloutService", "SkipWave", RELEASE),
    row("RunService", "StartRun", OPERATE),
    row("RunService", "GetRun", READ_OWN),
    row("RunService", "ListRuns", READ_OWN),
    row("RunService", "WatchRun", READ_OWN),
    row("RunService", "CancelRun", OPERATE),
    row("GateService", "ApplyGate", RELEASE),
    row("GateService", "GetGate", READ),
    row("GateService", "EvaluateGate", READ_OWN),
    row("GateService", "StreamDecision", READ_OWN),
    row("GateService", "Waive", RELEASE),
    row("GateService", "RevokeWaiver", RELEASE),
    row("GateService", "ListWaivers", READ),
    row("IssueService", "OpenIssue", RELEASE),
    row("IssueService", "GetIssue", READ_OWN),
    row("IssueService", "ListIssues", READ_OWN),
    row("IssueService", "UpdateIssue", RELEASE),
    row("IssueService", "SetFixRelease", RELEASE),
    row("IssueService", "WontFix", RELEASE),
    row("IssueService", "Reopen", RELEASE),
    row("IssueService", "ImportIssues", RELEASE),
    row("AuditService", "ListAudit", READ),
    row("AuditService", "VerifyAudit", READ),
    row("ReportService", "RenderReport", READ_OWN),
    row("ReportService", "StreamReport", READ_OWN),
    row("ReportService", "GetPublicKey", READ_OWN),
    row("ReportService", "RenderAttestation", READ),
    row("TokenService", "CreateToken", ADMIN),
    row("TokenService", "ListTokens", ADMIN),
    row("TokenService", "RevokeToken", ADMIN),
    row("StatusService", "RenderStatus", READ_OWN),
    row("StatusService", "AddNote", RELEASE),
    row("StatusService", "ListNotes", READ),
    row("StatusService", "CompleteAction", RELEASE),
];

/// The package every service path starts with.
const PACKAGE: &str = "tollgate.v1";

/// The row of a gRPC path, `/tollgate.v1.NodeService/ListNodes`; `None` when the table has
/// none.
pub fn row_of(path: &str) -> Option<&'static Row> {
    let (service, method) = path
        .strip_prefix('/')?
        .strip_prefix(PACKAGE)?
        .strip_prefix('.')?
        .split_once('/')?;
    TABLE
        .iter()
        .find(|row| row.service == service && row.method == method)
}

/// Why a call was refused after its caller was known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// The RPC has no row: nobody may call it.
    #[error(
        "{path} is not in the controller's authorization table, so nobody may call it; \
         upgrade the controller or the client so they agree"
    )]
    NotInTable {
        /// The gRPC path called.
        path: String,
    },
    /// The caller's role is not allowed.
    #[error(
        "API token {name} has role {role}, which may not call {service}/{method}; ask an admin \
         for a token with one of: {allowed}"
    )]
    Role {
        /// The token's name.
        name: String,
        /// Its role.
        role: Role,
        /// The service.
        service: &'static str,
        /// The method.
        method: &'static str,
        /// The roles that may.
        allowed: String,
    },
}

/// Whether a token named `name` with `role` may call `path`.
pub fn authorize(path: &str, name: &str, role: Role) -> Result<(), Forbidden> {
    let row = row_of(path).ok_or_else(|| Forbidden::NotInTable {
        path: path.to_owned(),
    })?;
    if row.roles.contains(&role) {
        return Ok(());
    }
    let allowed: Vec<&str> = row.roles.iter().map(|role| role.as_str()).collect();
    Err(Forbidden::Role {
        name: name.to_owned(),
        role,
        service: row.service,
        method: row.method,
        allowed: allowed.join(", "),
    })
}

/// The table as README.md shows it: one line per RPC, one column per role; `own` marks a
/// customer's call that answers about its own nodes only.
pub fn markdown() -> String {
    let mut out = String::from("| RPC |");
    for role in Role::ALL {
        out.push_str(&format!(" {role} |"));
    }
    out.push_str("\n| --- |");
    for _ in Role::ALL {
        out.push_str(" --- |");
    }
    out.push('\n');
    for row in TABLE {
        out.push_str(&format!("| `{}/{}` |", row.service, row.method));
        for role in Role::ALL {
            let cell = match (row.roles.contains(&role), role) {
                (false, _) => "",
                (true, Role::Customer) => "own",
                (true, _) => "yes",
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use std::collections::BTreeSet;

    /// Services whose calls are not manager calls: agents authenticate with node certificates.
    const NOT_MANAGER: &[&str] = &["AgentService"];

    #[test]
    fn every_manager_rpc_in_the_descriptor_has_exactly_one_row() {
        let set = prost_types::FileDescriptorSet::decode(tollgate_proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set decodes");
        let mut described = BTreeSet::new();
        for file in set.file.iter().filter(|file| file.package() == PACKAGE) {
            for service in &file.service {
                if NOT_MANAGER.contains(&service.name()) {
                    continue;
                }
                for method in &service.method {
                    described.insert((service.name().to_owned(), method.name().to_owned()));
                }
            }
        }
        let tabled: BTreeSet<(String, String)> = TABLE
            .iter()
            .map(|row| (row.service.to_owned(), row.method.to_owned()))
            .collect();
        assert_eq!(tabled.len(), TABLE.len(), "an RPC has two rows");
        let missing: Vec<_> = described.difference(&tabled).collect();
        assert!(missing.is_empty(), "RPCs without a row: {missing:?}");
        let stale: Vec<_> = tabled.difference(&described).collect();
        assert!(stale.is_empty(), "rows of no RPC: {stale:?}");
    }

    #[test]
    fn calls_are_refused_unless_a_row_allows_the_role() {
        let path = "/tollgate.v1.NodeService/SetCordon";
        assert_eq!(authorize(path, "ops", Role::Operator), Ok(()));
        assert_eq!(authorize(path, "root", Role::Admin), Ok(()));
        let err = authorize(path, "eve", Role::Viewer).unwrap_err();
        assert!(
            err.to_string()
                .contains("role viewer, which may not call NodeService/SetCordon"),
            "{err}"
        );
        assert!(err.to_string().contains("operator, admin"), "{err}");
        for unknown in [
            "/tollgate.v1.NodeService/Reboot",
            "/other.v1.NodeService/ListNodes",
            "/tollgate.v1.AgentService/Register",
            "",
        ] {
            assert!(
                matches!(
                    authorize(unknown, "root", Role::Admin),
                    Err(Forbidden::NotInTable { .. })
                ),
                "{unknown}"
            );
        }
    }

    #[test]
    fn applying_a_plan_takes_a_release_manager() {
        let path = "/tollgate.v1.PlanService/ApplyPlan";
        assert!(authorize(path, "ops", Role::Operator).is_err());
        assert!(authorize(path, "rm", Role::ReleaseManager).is_ok());
    }

    #[test]
    fn the_markdown_table_has_a_line_per_rpc() {
        let text = markdown();
        assert_eq!(text.lines().count(), TABLE.len() + 2);
        assert!(text.contains("| `NodeService/ListNodes` | yes | yes | yes | yes | own |"));
        assert!(text.contains("| `TokenService/CreateToken` |  |  |  | yes |  |"));
    }
}
