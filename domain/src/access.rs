//! Who may call the manager API: the roles an API token carries, and whether a stored token
//! is still good at a given moment. Which role may call which RPC is the controller's
//! authorization table (`controller/src/grpc/authz.rs`); this module holds the vocabulary and
//! the decisions that need no I/O.

use crate::Timestamp;
use crate::limits;

/// What an API token may do. Its kebab-case name is the one on the wire, in flags and in the
/// documentation.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::EnumIter,
)]
#[strum(serialize_all = "kebab-case", parse_err_ty = String, parse_err_fn = crate::names::unknown::<Self>)]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// A viewer who also cordons nodes, sets their health and starts and cancels runs.
    Operator,
    /// A viewer who also applies plans and gates, creates releases, grants and revokes
    /// waivers, promotes, demotes, halts and resumes releases.
    ReleaseManager,
    /// Everything, including API tokens.
    Admin,
    /// Reads the releases, nodes, runs, decisions and reports of one customer only: the nodes
    /// whose `customer` label has the token's customer value.
    Customer,
}

impl Role {
    /// Every role, in the order the documentation lists them.
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Operator,
        Role::ReleaseManager,
        Role::Admin,
        Role::Customer,
    ];

    /// The role's name on the wire, in flags and in the documentation.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The label whose value scopes a customer token: a customer sees the nodes whose `customer`
/// label equals its token's customer, and nothing of the others.
pub const CUSTOMER_LABEL: &str = "customer";

/// Whether a caller scoped to `customer` (`None`: not scoped) sees a node with `labels`: only
/// a node whose `customer` label is its customer.
pub fn sees_node(customer: Option<&str>, labels: &crate::fleet::Labels) -> bool {
    customer.is_none_or(|customer| labels.get(CUSTOMER_LABEL).map(String::as_str) == Some(customer))
}

/// Whether a caller scoped to `customer` (`None`: not scoped) sees an issue set to matter to
/// `customers`: only an issue whose customers include its customer.
pub fn sees_issue(customer: Option<&str>, customers: &std::collections::BTreeSet<String>) -> bool {
    customer.is_none_or(|customer| customers.contains(customer))
}

/// Whether a caller scoped to `customer` (`None`: not scoped) sees a release that is for
/// `customers`: one for its customer, or for no customer in particular (none listed). A
/// release only for other customers is, to that caller, a release that does not exist.
pub fn sees_release(customer: Option<&str>, customers: &[String]) -> bool {
    customer
        .is_none_or(|customer| customers.is_empty() || customers.iter().any(|of| of == customer))
}

/// The customer scope as `report --customer` writes it: `customer=VALUE`.
pub fn customer_scope(customer: &str) -> String {
    format!("{CUSTOMER_LABEL}={customer}")
}

/// An API token as the controller keeps it: never the secret, only its sha256 (kept beside
/// it by the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// Its name: the actor recorded on everything done with it. Unique.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The customer a [`Role::Customer`] token sees; `None` for every other role.
    pub customer: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// From when it is refused.
    pub expires_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

/// Why a known token is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// It was revoked.
    #[error(
        "API token {name} was revoked at {at}: ask an admin for a new one (tollgate token create)"
    )]
    Revoked {
        /// The token's name.
        name: String,
        /// When.
        at: Timestamp,
    },
    /// It expired.
    #[error("API token {name} expired at {at}: ask an admin for a new one (tollgate token create)")]
    Expired {
        /// The token's name.
        name: String,
        /// When.
        at: Timestamp,
    },
}

impl ApiToken {
    /// Whether a call made with this token at `now` is accepted: not once it is revoked or
    /// expired (a revocation is named first, as it is the deliberate one).
    pub fn check(&self, now: Timestamp) -> Result<(), TokenRefusal> {
        if let Some(at) = self.revoked_at {
            return Err(TokenRefusal::Revoked {
                name: self.name.clone(),
                at,
            });
        }
        if now >= self.expires_at {
            return Err(TokenRefusal::Expired {
                name: self.name.clone(),
                at: self.expires_at,
            });
        }
        Ok(())
    }
}

/// A request to create a token, as the caller sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The name.
    pub name: String,
    /// The role's name.
    pub role: String,
    /// The customer, for a customer token; empty otherwise.
    pub customer: String,
    /// How long it is good for, in seconds.
    pub ttl_seconds: i64,
}

/// The longest a created token may be good for: a year. A token that never expires is a
/// bootstrap token (`--api-token-file`), not one made through the API.
pub const MAX_TTL_SECONDS: i64 = 366 * 24 * 3600;

/// Checks a token's name: within the name limit, and only letters, digits, `-`, `_` and `.`
/// (so `NAME:ROLE=SECRET` flags and `NAME SECRET` file lines stay unambiguous).
pub fn check_token_name(name: &str) -> Result<(), String> {
    limits::check_text(&limits::NAME, name)?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "token name {} may hold only letters, digits, '-', '_' and '.'",
            limits::quote(name)
        ));
    }
    Ok(())
}

/// The token to store for `request`, created by `actor` at `now`, or every bad field as
/// `(field, problem)`.
pub fn create_token(
    request: TokenRequest,
    actor: &str,
    now: Timestamp,
) -> Result<ApiToken, Vec<(&'static str, String)>> {
    let mut problems = Vec::new();
    let name = request.name.trim().to_owned();
    if name.is_empty() {
        problems.push(("name", "is empty; give the token a name".to_owned()));
    } else if let Err(message) = check_token_name(&name) {
        problems.push(("name", message));
    }
    let role = request
        .role
        .parse::<Role>()
        .map_err(|message| problems.push(("role", message)))
        .ok();
    let customer = request.customer.trim();
    match (role, customer.is_empty()) {
        (Some(Role::Customer), true) => problems.push((
            "customer",
            "is empty; a customer token needs the customer label value it sees (--customer)"
                .to_owned(),
        )),
        (Some(role), false) if role != Role::Customer => problems.push((
            "customer",
            format!("is only for the customer role, not {role}; leave it out"),
        )),
        _ => {}
    }
    if let Err(message) = limits::check_text(&limits::LABEL_VALUE, customer) {
        problems.push(("customer", message));
    }
    if request.ttl_seconds <= 0 || request.ttl_seconds > MAX_TTL_SECONDS {
        problems.push((
            "ttl_seconds",
            format!(
                "{} is not between 1 and {MAX_TTL_SECONDS} seconds; give an expiry such as 90d",
                request.ttl_seconds
            ),
        ));
    }
    let Some(role) = role.filter(|_| problems.is_empty()) else {
        return Err(problems);
    };
    Ok(ApiToken {
        name,
        role,
        customer: (role == Role::Customer).then(|| customer.to_owned()),
        created_by: actor.to_owned(),
        created_at: now,
        expires_at: now + chrono::Duration::seconds(request.ttl_seconds),
        revoked_at: None,
    })
}

/// Whether a URL's host is a loopback address or `localhost`: the only place a client sends
/// plain text to (`http://`). A URL that does not parse is not loopback.
pub fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_told_apart() {
        for url in [
            "http://127.0.0.1:7800",
            "http://127.5.6.7",
            "http://localhost:7800/",
            "http://LOCALHOST",
            "http://[::1]:7800",
            "http://user@127.0.0.1:1",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:7800",
            "http://controller.lab:7800",
            "http://127.0.0.1.evil.example",
            "http://[::2]:7800",
            "http://localhost.evil.example",
            "127.0.0.1:7800",
            "",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }
    use chrono::TimeZone as _;

    fn at(seconds: i64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_700_000_000 + seconds, 0)
            .unwrap()
    }

    fn request(role: &str, customer: &str, ttl_seconds: i64) -> TokenRequest {
        TokenRequest {
            name: "ci".into(),
            role: role.into(),
            customer: customer.into(),
            ttl_seconds,
        }
    }

    #[test]
    fn a_customer_sees_only_the_issues_that_name_it() {
        let customers = |names: &[&str]| {
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert!(sees_issue(None, &customers(&[])));
        assert!(sees_issue(Some("acme"), &customers(&["acme", "globex"])));
        assert!(!sees_issue(Some("acme"), &customers(&["globex"])));
        assert!(!sees_issue(Some("acme"), &customers(&[])));
    }

    #[test]
    fn a_customer_sees_its_releases_and_those_for_no_customer_only() {
        let customers = |names: &[&str]| {
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>()
        };
        assert!(sees_release(None, &customers(&["globex"])));
        assert!(sees_release(Some("acme"), &customers(&[])));
        assert!(sees_release(Some("acme"), &customers(&["acme"])));
        assert!(sees_release(Some("acme"), &customers(&["globex", "acme"])));
        assert!(!sees_release(Some("acme"), &customers(&["globex"])));
    }

    #[test]
    fn roles_round_trip_and_unknown_ones_list_the_choices() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        let err = "root".parse::<Role>().unwrap_err();
        assert!(
            err.contains("viewer, operator, release-manager, admin, customer"),
            "{err}"
        );
    }

    #[test]
    fn a_customer_sees_only_nodes_with_its_label() {
        let labels = |value: &str| {
            crate::fleet::Labels::from([(CUSTOMER_LABEL.to_owned(), value.to_owned())])
        };
        assert!(sees_node(None, &labels("b")));
        assert!(sees_node(Some("a"), &labels("a")));
        assert!(!sees_node(Some("a"), &labels("b")));
        assert!(!sees_node(Some("a"), &crate::fleet::Labels::new()));
        assert_eq!(customer_scope("a"), "customer=a");
    }

    #[test]
    fn tokens_are_good_until_revoked_or_expired() {
        let token = create_token(request("operator", "", 60), "alice", at(0)).unwrap();
        assert_eq!(token.role, Role::Operator);
        assert_eq!(token.customer, None);
        assert_eq!(token.check(at(59)), Ok(()));
        assert!(matches!(
            token.check(at(60)),
            Err(TokenRefusal::Expired { .. })
        ));
        let revoked = ApiToken {
            revoked_at: Some(at(10)),
            ..token
        };
        let err = revoked.check(at(70)).unwrap_err();
        assert!(matches!(err, TokenRefusal::Revoked { .. }), "{err}");
        assert!(err.to_string().contains("tollgate token create"), "{err}");
    }

    #[test]
    fn a_customer_token_needs_its_customer_and_no_other_role_has_one() {
        let token = create_token(request("customer", "acme", 60), "a", at(0)).unwrap();
        assert_eq!(token.customer.as_deref(), Some("acme"));
        let fields = |r| create_token(r, "a", at(0)).unwrap_err();
        let names = |problems: Vec<(&'static str, String)>| -> Vec<&'static str> {
            problems.into_iter().map(|(field, _)| field).collect()
        };
        assert_eq!(names(fields(request("customer", "", 60))), ["customer"]);
        assert_eq!(names(fields(request("viewer", "acme", 60))), ["customer"]);
        assert_eq!(
            names(fields(request("root", "", 0))),
            ["role", "ttl_seconds"]
        );
        let mut nameless = request("viewer", "", 60);
        nameless.name = " ".into();
        assert_eq!(names(fields(nameless)), ["name"]);
    }
}
