//! `natter`: the natter command-line tool. All of it lives in [`natter_client::cli`].

fn main() -> std::process::ExitCode {
    natter_client::cli::main()
}
