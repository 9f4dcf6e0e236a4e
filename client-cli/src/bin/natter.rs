//! `natter`: the natter command-line tool. All of it lives in [`natter_cli::cli`].

fn main() -> std::process::ExitCode {
    natter_cli::cli::main()
}
