fn main() {
    std::process::exit(mlpipe::cli::main());
}
