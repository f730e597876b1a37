//! The `rota` executable: parse the command line, run it, map the result to an exit code.

use clap::Parser;

fn main() {
    rota::memory::tune_allocator();
    rota::panics::abort_on_panic();
    let cli = rota::cli::Cli::parse();
    if let Err(failure) = rota::cli::run(cli) {
        eprintln!("rota: {failure}");
        std::process::exit(failure.exit_code());
    }
}
