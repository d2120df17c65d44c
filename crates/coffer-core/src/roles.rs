/// A member's role in an organisation. The full permission matrix is in
/// docs/access-control.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Contributor,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Contributor => "contributor",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "contributor" => Role::Contributor,
            "viewer" => Role::Viewer,
            _ => return None,
        })
    }

    /// May create and change projects, environments and parameters.
    pub fn can_write(self) -> bool {
        self >= Role::Contributor
    }

    /// May see the values of secret parameters.
    pub fn can_read_secrets(self) -> bool {
        self >= Role::Contributor
    }

    /// May seal the server.
    pub fn can_operate(self) -> bool {
        self == Role::Owner
    }
}
