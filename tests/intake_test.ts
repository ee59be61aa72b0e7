/**
 * The client body checks on `Request`s built in code, as `deploy.ts`'s handler and embedders get
 * them: no body at all, and a declared length that the body does not keep to.
 */
import assert from "node:assert/strict";
import { readClientBody } from "../src/intake.ts";
import { InFlight } from "../src/upstream.ts";

const URL = "http://router.test/openai/chat/completions";
const limits = { maxBytes: 50, deadlineMs: 1000 };

Deno.test("a POST without a body is refused as not JSON, whatever length it declares", async () => {
  const declared: Record<string, string>[] = [{}, { "content-length": "0" }, {
    "content-length": "12",
  }];
  for (const headers of declared) {
    const refusal = await readClientBody(
      new Request(URL, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
      }),
      limits,
      new InFlight(),
    );
    assert.deepEqual(
      { ...refusal },
      {
        status: 400,
        message: "Request body must be valid JSON",
        code: "invalid_body",
        logged: "",
      },
      JSON.stringify(headers),
    );
  }
});

Deno.test("a body longer than it declared is held to the size limit all the same", async () => {
  const body = JSON.stringify({ model: "m", padding: "x".repeat(100) });
  const request = new Request(URL, { method: "POST", headers: { "content-length": "10" }, body });
  const refusal = await readClientBody(request, limits, new InFlight());
  assert.equal("status" in refusal && refusal.status, 413);
  const small = JSON.stringify({ model: "m" });
  const fits = new Request(URL, {
    method: "POST",
    headers: { "content-length": "10" },
    body: small,
  });
  const accepted = await readClientBody(fits, limits, new InFlight());
  assert.deepEqual("fields" in accepted && accepted.fields, { model: "m" });
});
