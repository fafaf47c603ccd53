//! `biofs`: mount a biofs image or device through FUSE (being built).

fn main() {
    eprintln!("biofs: mounting is not built yet");
    std::process::exit(1);
}
