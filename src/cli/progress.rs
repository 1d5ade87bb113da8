//! The progress bar `archive`, `restore` and `replay` draw on a terminal.

use candystore::storage;

/// A progress bar on a terminal (stderr); nothing otherwise.
pub(crate) struct Bar(pub(crate) indicatif::ProgressBar);

impl Bar {
    pub(crate) fn new() -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:24} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        Self(bar)
    }
}

impl storage::archive::Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.0.reset();
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.set_message(what.to_owned());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
