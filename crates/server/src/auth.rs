//! Who may call which API route.
//!
//! An admin token reaches every route. A node's per-boot token reaches only the routes of
//! its own MAC (`/agent/{mac}/…`, `GET /nodes/{mac}` and its events) and the reads an install
//! needs: image manifests and chunks, which are the same for every node and signed anyway.
//! No token, or one the appliance does not know, is 401; a known token on a route it may not
//! use is 403.

use metalcast_proto::MacAddr;

/// The owner of a valid bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin { name: String },
    Node(MacAddr),
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Admin tokens only.
    Admin,
    /// An admin token or the token of this node.
    Node(MacAddr),
    /// An admin token or any node's token: reading image manifests and chunks.
    ImageRead,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this route needs an admin token; node {0}'s token cannot use it")]
    AdminOnly(MacAddr),
    #[error("the token of node {token} cannot reach the routes of node {route}")]
    OtherNode { token: MacAddr, route: MacAddr },
}

pub fn authorize(principal: &Principal, access: Access) -> Result<(), Denied> {
    match (principal, access) {
        (Principal::Admin { .. }, _) | (Principal::Node(_), Access::ImageRead) => Ok(()),
        (Principal::Node(own), Access::Node(route)) if *own == route => Ok(()),
        (Principal::Node(own), Access::Node(route)) => {
            Err(Denied::OtherNode { token: *own, route })
        }
        (Principal::Node(own), Access::Admin) => Err(Denied::AdminOnly(*own)),
    }
}

/// The token of an `Authorization` header value: `Bearer <token>`, the scheme matched
/// without regard to case (RFC 7235). `None` when it is not a bearer credential.
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn admin_reaches_everything() {
        let admin = Principal::Admin { name: "ops".into() };
        assert_eq!(authorize(&admin, Access::Admin), Ok(()));
        assert_eq!(
            authorize(&admin, Access::Node(mac("52:54:00:00:00:01"))),
            Ok(())
        );
    }

    #[test]
    fn node_reaches_only_its_own_routes() {
        let a = mac("52:54:00:00:00:0a");
        let b = mac("52:54:00:00:00:0b");
        let node_a = Principal::Node(a);
        assert_eq!(authorize(&node_a, Access::Node(a)), Ok(()));
        assert_eq!(
            authorize(&node_a, Access::Node(b)),
            Err(Denied::OtherNode { token: a, route: b })
        );
        assert_eq!(authorize(&node_a, Access::Admin), Err(Denied::AdminOnly(a)));
        assert_eq!(authorize(&node_a, Access::ImageRead), Ok(()));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer  "), None);
        assert_eq!(bearer_token(""), None);
    }
}
