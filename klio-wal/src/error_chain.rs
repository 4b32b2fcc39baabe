//! One way to print an error with its causes, for the CLI, log lines and error frames.
//!
//! # The rule
//!
//! Every error in the workspace follows the rule of quinn and the Rust API guidelines: an
//! error's message describes its own layer only, and its cause travels through
//! [`Error::source`]. A message therefore never repeats its cause's text, and printing an
//! error alone (`{e}`) shows one layer. Wherever a person or a peer reads an error, print it
//! through [`ErrorChain`], which walks the `source()` chain and shows each cause once, in
//! order.
//!
//! # Format
//!
//! `{}` prints `message: cause: cause ...` on one line, the way the CLI's final error reads:
//! `cannot read config file /x: No such file or directory (os error 2)`. `{:#}` prints the
//! message and then one cause per line, each indented and introduced by `caused by: `.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its causes (its `source()` chain), once each.
///
/// ```
/// use klio_wal::ErrorChain;
///
/// let e = std::io::Error::other("disk on fire");
/// assert_eq!(ErrorChain(&e).to_string(), "disk on fire");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl<'a> ErrorChain<'a> {
    /// The error and its causes, outermost first.
    pub fn links(self) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
        std::iter::successors(Some(self.0), |&e| e.source())
    }
}

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        for cause in self.links().skip(1) {
            if f.alternate() {
                write!(f, "\n  caused by: {cause}")?;
            } else {
                write!(f, ": {cause}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An error layer with its own message and an optional cause.
    #[derive(Debug)]
    struct Layer {
        message: String,
        cause: Option<Box<Self>>,
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.cause.as_deref().map(|c| c as &(dyn Error + 'static))
        }
    }

    fn chain_of(messages: &[String]) -> Option<Layer> {
        messages.iter().rev().fold(None, |cause, message| {
            Some(Layer {
                message: message.clone(),
                cause: cause.map(Box::new),
            })
        })
    }

    #[test]
    fn an_error_without_cause_renders_as_its_message() {
        let e = std::io::Error::other("cannot read config file /x");
        assert_eq!(ErrorChain(&e).to_string(), "cannot read config file /x");
        assert_eq!(
            format!("{:#}", ErrorChain(&e)),
            "cannot read config file /x"
        );
    }

    #[test]
    fn a_chain_reads_as_the_message_then_its_causes() {
        let messages = ["cannot read config file /x", "No such file or directory"];
        let Some(e) = chain_of(&messages.map(str::to_owned)) else {
            panic!("a chain of two layers");
        };
        assert_eq!(
            ErrorChain(&e).to_string(),
            "cannot read config file /x: No such file or directory"
        );
        assert_eq!(
            format!("{:#}", ErrorChain(&e)),
            "cannot read config file /x\n  caused by: No such file or directory"
        );
    }

    proptest! {
        #[test]
        fn a_chain_renders_each_cause_once_in_order(
            messages in prop::collection::vec("[a-z]{1,12}", 1..6)
        ) {
            let e = chain_of(&messages).ok_or_else(|| TestCaseError::fail("empty chain"))?;
            prop_assert_eq!(ErrorChain(&e).to_string(), messages.join(": "));
            prop_assert_eq!(
                format!("{:#}", ErrorChain(&e)),
                messages.join("\n  caused by: ")
            );
            prop_assert_eq!(ErrorChain(&e).links().count(), messages.len());
        }
    }
}
