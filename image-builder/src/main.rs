//! `meshimg`: the command line over the `meshimg` library. Parses arguments, prints, maps errors
//! to the exit codes documented in `--help`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meshimg::{board, lock};
use std::path::PathBuf;
use std::process::ExitCode;

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  the build or a command failed
  2  bad usage
  3  a board file or lock is invalid or stale
  4  integrity: a signature, hash or size did not verify
  5  the network or the mirror failed";

#[derive(Parser)]
#[command(name = "meshimg", version, about = "Builds signed, reproducible meshos SD images", after_help = EXIT_CODES)]
struct Cli {
    /// Project root holding board-defs/ and overlays/.
    #[arg(long, global = true, default_value = ".", env = "MESHOS_ROOT")]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the boards in board-defs/.
    Boards,
    /// Resolve a board's packages from the signed archive and write board-defs/<board>.lock.
    Lock { board: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!(" -> {cause}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    use meshimg::debian::release::ReleaseError;
    for cause in e.chain() {
        if cause.is::<board::BoardError>() {
            return 3;
        }
        if let Some(l) = cause.downcast_ref::<lock::LockError>() {
            return match l {
                lock::LockError::Release(r) => release_code(r),
                _ => 3,
            };
        }
        if let Some(r) = cause.downcast_ref::<ReleaseError>() {
            return release_code(r);
        }
    }
    1
}

fn release_code(r: &meshimg::debian::release::ReleaseError) -> u8 {
    use meshimg::debian::release::ReleaseError::*;
    match r {
        BadSignature { .. } | IndexMismatch { .. } | NotSigned { .. } => 4,
        Http(_) => 5,
        _ => 3,
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Boards => {
            for name in board::list(&cli.root) {
                let b = board::Board::load(&board::board_path(&cli.root, &name))?;
                println!("{:<16} {:<6} {}", b.name, b.arch, b.description);
            }
            Ok(())
        }
        Command::Lock { board: name } => {
            let board_path = board::board_path(&cli.root, &name);
            let b = board::Board::load(&board_path)?;
            let new = lock::resolve(&b, &|m| eprintln!("lock: {m}")).with_context(|| format!("locking {}", board_path.display()))?;
            let path = lock::lock_path(&cli.root, &name);
            lock::write(&path, &new)?;
            let total: u64 = new.packages.iter().map(|p| p.size).sum();
            eprintln!(
                "lock: wrote {} ({} packages, {:.1} MiB, {} {})",
                path.display(),
                new.packages.len(),
                total as f64 / 1048576.0,
                new.suite,
                new.release_date
            );
            Ok(())
        }
    }
}
