/**
 * Node/V8 flags every launcher of natsbind passes (the `natsbind` bin's shebang, deploy/, the demo,
 * the benchmark's `natsbind run` child). They must be given at start-up: V8 sizes its heap spaces
 * when the isolate is created, and setting them later from JavaScript has no effect.
 *
 * --max-semi-space-size=16: a full sync signs and hashes thousands of claims in bursts. With the
 * default, V8 grows the young generation to 2 x 64 MB and keeps it, which alone took natsbind run
 * with 10,000 projects to ~310 MB RSS (128 MB of it new space, old space ~54 MB). Capped at 16 MB
 * per semi-space the same run peaks near 220 MB at the same speed (`make bench`, section 1b).
 */
export const NODE_FLAGS: readonly string[] = ["--max-semi-space-size=16"];
