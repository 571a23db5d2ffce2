#!/usr/bin/env bash
# Builds the bender .deb and .rpm into target/packages/ (plus bender-dbgsym .ddeb, the debug
# symbols). Needs cargo-deb and cargo-generate-rpm: check.sh installs them when they are missing.
# Run: packaging/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/packages
cargo build --release --locked
rm -rf "$out" target/packaging
mkdir -p "$out" target/packaging
# The man page and shell completions come from the binary's own CLI definition.
bin=target/release/bender
# bender.1 and one page per subcommand (bender-agent.1, bender-backend-switch.1, ...).
"$bin" man --dir target/packaging/man
gzip -9n target/packaging/man/*.1
"$bin" completions bash >target/packaging/bender.bash
"$bin" completions zsh >target/packaging/_bender
"$bin" completions fish >target/packaging/bender.fish
# --no-build: the binary above is the one packaged; cargo-deb strips it into the package and
# puts the symbols in the .ddeb.
cargo deb --no-build --locked --output "$out/"
# cargo-generate-rpm packages files as they are; strip a copy (keeping the symbol table, so a
# panic's backtrace still names functions).
objcopy --strip-debug "$bin" target/packaging/bender
cargo generate-rpm --output "$out/"
ls -l "$out"
