import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { leaderIdentity, urlOfIdentity } from "../../src/k8s/webhook-relay.ts";

describe("webhook relay: the leader's address in its Lease holder identity", () => {
  it("advertises the listener's own address, or a non-loopback one for a wildcard listener", () => {
    assert.equal(leaderIdentity("pod-a", 7, "127.0.0.1:0", 8123), "pod-a_7@http://127.0.0.1:8123");
    assert.equal(leaderIdentity("pod-a", 7, "[::1]:8080", 8080), "pod-a_7@http://[::1]:8080");
    const wildcard = leaderIdentity("pod-a", 7, "0.0.0.0:8080", 8080);
    assert.match(wildcard, /^pod-a_7@http:\/\/\d+\.\d+\.\d+\.\d+:8080$/);
  });

  it("reads the URL back, and nothing from identities that carry none or something else", () => {
    assert.equal(urlOfIdentity("pod-a_7@http://10.1.2.3:8080"), "http://10.1.2.3:8080");
    assert.equal(urlOfIdentity("pod-a_7@http://[fd00::1]:8080"), "http://[fd00::1]:8080");
    for (const odd of [
      undefined,
      "",
      "pod-a_7",
      "pod-a_7@https://x:1",
      "a@http://x:1/path",
      "a@http://x y:1",
    ]) {
      assert.equal(urlOfIdentity(odd), undefined, String(odd));
    }
  });
});
