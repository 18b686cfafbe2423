//! Errors as one line of text with their causes.

use std::error::Error;

/// "outer: cause: root cause", since library errors say little on their own ("client
/// error (Connect)"). A cause whose text the line already holds is skipped (wrappers
/// repeat their source's message).
pub fn error_chain(error: &dyn Error) -> String {
    with_causes(error.to_string(), error.source())
}

/// `text` followed by each cause in `source`'s chain that it does not already say.
pub fn with_causes(mut text: String, mut source: Option<&(dyn Error + 'static)>) -> String {
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    #[test]
    fn causes_are_appended_unless_already_said() {
        let root = Layer {
            text: "connection refused",
            source: None,
        };
        let wrapper = Layer {
            text: "connect: connection refused",
            source: Some(Box::new(root)),
        };
        let outer = Layer {
            text: "client error (Connect)",
            source: Some(Box::new(wrapper)),
        };
        assert_eq!(
            error_chain(&outer),
            "client error (Connect): connect: connection refused"
        );
    }
}
