/** The attempt plan per model, and that it is made once per loaded config. */
import assert from "node:assert/strict";
import { parseConfig } from "../src/config.ts";
import { candidatesFor, planCandidates } from "../src/plan.ts";
import { dialects } from "../src/providers/mod.ts";

const configWith = (mapping: Record<string, string[]>) =>
  parseConfig(
    JSON.stringify({
      model_mapping: mapping,
      providers: [
        { name: "backup", type: "openai", api_key: "k1", priority: 2 },
        { name: "main", type: "openai", api_key: "k2", priority: 1 },
        { name: "claude", type: "anthropic", api_key: "k3" },
      ],
    }),
    () => undefined,
  );

const plan = (candidates: readonly { provider: { name: string }; model: string }[]) =>
  candidates.map((c) => `${c.provider.name}:${c.model}`);

Deno.test("the plan is made once per config, endpoint and model, and is what planCandidates makes", () => {
  const config = configWith({ fast: ["gpt-4o-mini", "gpt-4o"] });
  const first = candidatesFor(config, dialects.openai, "fast");
  assert.deepEqual(plan(first), [
    "main:gpt-4o-mini",
    "main:gpt-4o",
    "backup:gpt-4o-mini",
    "backup:gpt-4o",
  ]);
  assert.deepEqual(first, planCandidates(config, dialects.openai, "fast"));
  assert.equal(candidatesFor(config, dialects.openai, "fast"), first);
  assert.deepEqual(plan(candidatesFor(config, dialects.anthropic, "fast")), [
    "claude:gpt-4o-mini",
    "claude:gpt-4o",
  ]);
});

Deno.test("a reloaded config plans with its own mapping, not the plan cached for the one before", () => {
  const before = configWith({ fast: ["gpt-4o-mini"] });
  const after = configWith({ fast: ["gpt-4o"] });
  assert.deepEqual(plan(candidatesFor(before, dialects.openai, "fast")), [
    "main:gpt-4o-mini",
    "backup:gpt-4o-mini",
  ]);
  assert.deepEqual(plan(candidatesFor(after, dialects.openai, "fast")), [
    "main:gpt-4o",
    "backup:gpt-4o",
  ]);
});

Deno.test("a model name longer than any real one is planned, not kept", () => {
  const config = configWith({});
  const long = "m".repeat(300);
  const first = candidatesFor(config, dialects.openai, long);
  assert.deepEqual(plan(first), [`main:${long}`, `backup:${long}`]);
  assert.notEqual(candidatesFor(config, dialects.openai, long), first, "planned again");
  const short = "m".repeat(256);
  assert.equal(
    candidatesFor(config, dialects.openai, short),
    candidatesFor(config, dialects.openai, short),
  );
});

Deno.test("plans for any number of client model names stay correct past the cache's cap", () => {
  const config = configWith({});
  const first = candidatesFor(config, dialects.openai, "model-0");
  for (let i = 1; i <= 3000; i++) {
    const name = `model-${i}`;
    assert.deepEqual(plan(candidatesFor(config, dialects.openai, name)), [
      `main:${name}`,
      `backup:${name}`,
    ]);
  }
  const again = candidatesFor(config, dialects.openai, "model-0");
  assert.notEqual(again, first, "made anew once the cap let the first plan go");
  assert.deepEqual(again, first);
});
