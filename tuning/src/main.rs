//! `cue-tune`: host checks and tuning for `cue-edge`. See `cue-tune --help` and docs/tuning.md.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
