//! What the command-line tools share.

use std::ffi::OsString;
use std::process::ExitCode;

/// Parse `argv` with clap the way every biofs tool does: `--help` and
/// `--version` print and exit 0; a usage error prints clap's message and
/// "Try 'NAME --help'." and exits 1 (`Err` carries the exit code).
pub fn parse_args<A: clap::Parser>(
    name: &str,
    argv: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<A, ExitCode> {
    A::try_parse_from(argv).map_err(|e| {
        use clap::error::ErrorKind;
        let code = match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
            _ => 1,
        };
        let _ = e.print();
        if code != 0 {
            eprintln!("Try '{name} --help'.");
        }
        ExitCode::from(code)
    })
}
