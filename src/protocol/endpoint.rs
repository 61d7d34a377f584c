//! The endpoints E2EE v2 defines and how a request path names them.

/// An endpoint E2EE v2 defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings` (buffered responses only).
    Embeddings,
}

impl Endpoint {
    /// The endpoint a request path names (the path may carry a prefix before `/v1/…`).
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.strip_suffix('/').unwrap_or(path);
        [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings]
            .into_iter()
            .find(|e| path.ends_with(e.path()))
    }

    /// The canonical path.
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_from_path() {
        assert_eq!(Endpoint::from_path("/v1/chat/completions"), Some(Endpoint::ChatCompletions));
        assert_eq!(Endpoint::from_path("/api/v1/completions/"), Some(Endpoint::Completions));
        assert_eq!(Endpoint::from_path("/v1/embeddings"), Some(Endpoint::Embeddings));
        assert_eq!(Endpoint::from_path("/v1/messages"), None);
        assert_eq!(Endpoint::from_path("/v1/responses"), None);
    }
}
