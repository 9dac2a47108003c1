#[magnus::init]
fn init(_ruby: &magnus::Ruby) -> Result<(), magnus::Error> {
    Ok(())
}
