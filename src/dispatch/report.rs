//! Log lines for failures that repeat: the first of each code at its level,
//! the rest at debug (no log storm; the metrics record counts them all).

/// The codes already logged.
#[derive(Debug, Default)]
pub struct Reported {
    codes: Vec<String>,
}

impl Reported {
    /// Logs `what: code detail` at error level the first time `code` is seen.
    pub fn error(&mut self, code: &str, what: &str, detail: &str) {
        self.log(log::Level::Error, code, what, detail);
    }

    /// `error` at warn level.
    pub fn warn(&mut self, code: &str, what: &str, detail: &str) {
        self.log(log::Level::Warn, code, what, detail);
    }

    fn log(&mut self, level: log::Level, code: &str, what: &str, detail: &str) {
        if self.codes.iter().any(|c| c == code) {
            log::debug!("{what}: {code} {detail}");
        } else {
            self.codes.push(code.to_string());
            log::log!(
                level,
                "{what}: {code} {detail} (further {code} occurrences are counted, not logged)"
            );
        }
    }
}
