import assert from "node:assert/strict";
import type { EventSourceMessage } from "eventsource-parser";
import { anthropic } from "../src/providers/anthropic.ts";
import { dialects, type EventRole } from "../src/providers/mod.ts";
import { openai } from "../src/providers/openai.ts";
import { SseEventReader, SseFramer } from "../src/sse.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function fixtureBytes(name: string): Promise<Uint8Array> {
  return Deno.readFile(new URL(`./fixtures/${name}`, import.meta.url));
}

/** Turns SSE bytes into events the way the relay does: framer first, then one reader. */
function eventsOf(bytes: Uint8Array, chunkSize = bytes.length): EventSourceMessage[] {
  const framer = new SseFramer();
  const reader = new SseEventReader();
  const events: EventSourceMessage[] = [];
  for (let i = 0; i < bytes.length; i += chunkSize) {
    const framed = framer.push(bytes.subarray(i, i + chunkSize));
    if (framed === null) continue;
    let from = 0;
    for (const end of framed.ends) {
      events.push(...reader.read(framed.bytes.subarray(from, end)));
      from = end;
    }
  }
  const rest = framer.flush();
  if (rest !== null) events.push(...reader.readLast(rest));
  return events;
}

async function fixtureEvents(name: string, chunkSize?: number): Promise<EventSourceMessage[]> {
  return eventsOf(await fixtureBytes(name), chunkSize);
}

async function fixtureJson(name: string): Promise<unknown> {
  return JSON.parse(decoder.decode(await fixtureBytes(name)));
}

function event(data: string, name?: string): EventSourceMessage {
  return { id: undefined, event: name, data };
}

/** Feeds every event to a fresh assembler; returns it with the role of each event. */
function assemble(type: "openai" | "anthropic", events: EventSourceMessage[]) {
  const assembler = dialects[type].newAssembler(0);
  const roles: EventRole[] = events.map((e) => assembler.add(e));
  return { assembler, roles };
}

// OpenAI

Deno.test("openai assembler rebuilds a chat.completion with content, finish_reason and usage", async () => {
  for (const size of [undefined, 1, 7]) {
    const events = await fixtureEvents("openai_chat_stream_usage.sse", size);
    assert.equal(events.length, 7);
    const { assembler } = assemble("openai", events);
    assert.equal(assembler.complete, true);
    assert.deepEqual(assembler.response(), {
      id: "chatcmpl-9xQ2rT5vLm",
      object: "chat.completion",
      created: 1764460800,
      model: "gpt-4o-2024-08-06",
      service_tier: "default",
      system_fingerprint: "fp_b7d65f1a5b",
      choices: [{
        index: 0,
        message: { role: "assistant", content: "Bonjour à vous 👋", refusal: null },
        finish_reason: "stop",
      }],
      usage: {
        prompt_tokens: 19,
        completion_tokens: 5,
        total_tokens: 24,
        prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
        completion_tokens_details: {
          reasoning_tokens: 0,
          audio_tokens: 0,
          accepted_prediction_tokens: 0,
          rejected_prediction_tokens: 0,
        },
      },
    });
    assert.deepEqual(assembler.usage, (assembler.response() as { usage: unknown }).usage);
  }
});

Deno.test("openai assembler leaves usage null while chunks carry usage: null", async () => {
  const events = await fixtureEvents("openai_chat_stream_usage.sse");
  const assembler = openai.newAssembler(0);
  for (const e of events.slice(0, 5)) {
    assembler.add(e);
    assert.equal(assembler.usage, null);
  }
  assert.equal((assembler.response() as { usage: unknown }).usage, null);
  assembler.add(events[5]);
  assert.equal(assembler.usage?.total_tokens, 24);
  // A later usage: null chunk does not wipe it.
  assembler.add(event(JSON.stringify({ id: "x", choices: [], usage: null })));
  assert.equal(assembler.usage?.total_tokens, 24);
  assert.equal(assembler.complete, false);
  assembler.add(events[6]);
  assert.equal(assembler.complete, true);
});

Deno.test("openai assembler joins parallel tool_calls by index", async () => {
  const { assembler, roles } = assemble(
    "openai",
    await fixtureEvents("openai_chat_stream_tool_calls.sse", 3),
  );
  assert.deepEqual(roles, ["output", "output", "output", "output", "output", "output", "output"]);
  assert.equal(assembler.complete, true);
  assert.equal(assembler.usage, null);
  const response = assembler.response() as {
    choices: {
      finish_reason: string;
      message: {
        content: unknown;
        tool_calls: { id: string; type: string; function: { name: string; arguments: string } }[];
      };
    }[];
    usage: unknown;
  };
  assert.equal(response.usage, null);
  assert.equal(response.choices.length, 1);
  const [choice] = response.choices;
  assert.equal(choice.finish_reason, "tool_calls");
  assert.equal(choice.message.content, null);
  assert.deepEqual(choice.message.tool_calls, [
    {
      id: "call_Qm3v8Xw1",
      type: "function",
      function: { name: "get_weather", arguments: '{"location": "Paris"}' },
    },
    {
      id: "call_Zr9k2Lp4",
      type: "function",
      function: { name: "get_time", arguments: '{"tz": "Europe/Paris"}' },
    },
  ]);
  assert.deepEqual(
    choice.message.tool_calls.map((call) => JSON.parse(call.function.arguments)),
    [{ location: "Paris" }, { tz: "Europe/Paris" }],
  );
});

Deno.test("openai assembler rebuilds a long stream's content and tool arguments whole, within its text budget", () => {
  const chunk = (delta: unknown) =>
    event(JSON.stringify({ id: "c1", model: "m", choices: [{ index: 0, delta }] }));
  const pieces = Array.from({ length: 1000 }, (_, i) => `w${i} `);
  const args = Array.from({ length: 300 }, (_, i) => `${i},`);
  const build = (limit: number) => {
    const assembler = openai.newAssembler(limit);
    for (const piece of pieces) assembler.add(chunk({ content: piece }));
    for (const [i, part] of args.entries()) {
      const fn = i === 0 ? { name: "f", arguments: part } : { arguments: part };
      assembler.add(
        chunk({ tool_calls: [{ index: 0, ...(i === 0 ? { id: "t1" } : {}), function: fn }] }),
      );
    }
    const response = assembler.response() as {
      choices: {
        message: { content: string; tool_calls: { function: { arguments: string } }[] };
      }[];
    };
    return response.choices[0].message;
  };
  const whole = build(0);
  assert.equal(whole.content, pieces.join(""));
  assert.deepEqual(whole.tool_calls, [
    { id: "t1", type: "function", function: { name: "f", arguments: args.join("") } },
  ]);
  const cut = build(100);
  assert.equal(cut.content, pieces.join("").slice(0, 100));
  assert.equal(cut.tool_calls[0].function.arguments, "");
});

Deno.test("openai assembler gives each chunk its commit role", async () => {
  const events = await fixtureEvents("openai_chat_stream_usage.sse");
  const { roles, assembler } = assemble("openai", events);
  // Role-only first chunk, three content chunks, finish_reason, usage, [DONE].
  assert.deepEqual(roles, ["hold", "output", "output", "output", "output", "output", "output"]);
  assert.equal(assembler.complete, true);

  const chunk = (delta: unknown, finish: string | null = null) =>
    event(JSON.stringify({ id: "c", choices: [{ index: 0, delta, finish_reason: finish }] }));
  const fresh = () => openai.newAssembler(0);
  assert.equal(fresh().add(chunk({ role: "assistant" })), "hold");
  assert.equal(fresh().add(chunk({ role: "assistant", content: "" })), "hold");
  assert.equal(fresh().add(chunk({ content: "x" })), "output");
  assert.equal(fresh().add(chunk({ refusal: "no" })), "output");
  assert.equal(fresh().add(chunk({}, "stop")), "output");

  const done = fresh();
  assert.equal(done.add(event("[DONE]")), "output");
  assert.equal(done.complete, true);

  const failed = fresh();
  const error = { error: { message: "Overloaded", type: "server_error", code: null } };
  assert.equal(failed.add(event(JSON.stringify(error))), "error");
  assert.equal(failed.complete, false);
  assert.equal(failed.response(), null);
});

Deno.test("openai usageOf reads a chat.completion body and is null without usage", async () => {
  const body = await fixtureJson("openai_chat_completion.json");
  assert.deepEqual(openai.usageOf(body), {
    prompt_tokens: 19,
    completion_tokens: 9,
    total_tokens: 28,
    prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 },
    completion_tokens_details: {
      reasoning_tokens: 0,
      audio_tokens: 0,
      accepted_prediction_tokens: 0,
      rejected_prediction_tokens: 0,
    },
  });
  const { usage: _, ...withoutUsage } = body as Record<string, unknown>;
  assert.equal(openai.usageOf(withoutUsage), null);
  assert.equal(openai.usageOf({ usage: null }), null);
  assert.equal(openai.usageOf(undefined), null);
  assert.equal(openai.usageOf("not json"), null);
  assert.equal(openai.usageOf([{ usage: {} }]), null);
});

Deno.test("openai errorBody has the API's error shape", () => {
  assert.deepEqual(openai.errorBody(404, "No provider serves model gpt-9", "model_not_found"), {
    error: {
      message: "No provider serves model gpt-9",
      type: "invalid_request_error",
      param: null,
      code: "model_not_found",
    },
  });
  assert.deepEqual(openai.errorBody(502, "All attempts failed", "upstream_error"), {
    error: {
      message: "All attempts failed",
      type: "upstream_error",
      param: null,
      code: "upstream_error",
    },
  });
  const body = openai.errorBody(504, "Timed out", "timeout") as { error: Record<string, unknown> };
  assert.deepEqual(Object.keys(body.error), ["message", "type", "param", "code"]);
});

Deno.test("openai streamErrorEvent is one data event the SDK reads as an error", () => {
  const text = openai.streamErrorEvent('Upstream "p1" reset');
  assert.ok(text.startsWith("data: "));
  assert.ok(text.endsWith("\n\n"));
  const events = eventsOf(encoder.encode(text));
  assert.equal(events.length, 1);
  assert.equal(events[0].event, undefined);
  assert.deepEqual(JSON.parse(events[0].data), {
    error: { message: 'Upstream "p1" reset', type: "upstream_error", code: "stream_interrupted" },
  });
  assert.equal(openai.newAssembler(0).add(events[0]), "error");
});

// Anthropic

Deno.test("anthropic assembler rebuilds the message with text, stop_reason and merged usage", async () => {
  for (const size of [undefined, 1, 7]) {
    const events = await fixtureEvents("anthropic_messages_stream.sse", size);
    assert.equal(events.length, 8);
    const { assembler } = assemble("anthropic", events);
    assert.equal(assembler.complete, true);
    const usage = {
      input_tokens: 472,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 2048,
      output_tokens: 6,
    };
    assert.deepEqual(assembler.usage, usage);
    assert.deepEqual(assembler.response(), {
      id: "msg_01XFDUDYJgAACzvnptvVoYEL",
      type: "message",
      role: "assistant",
      model: "claude-sonnet-4-5-20250929",
      content: [{ type: "text", text: "Bonjour à vous 👋" }],
      stop_reason: "end_turn",
      stop_sequence: null,
      usage,
    });
  }
});

Deno.test("anthropic usage from message_delta replaces output_tokens, never adds", () => {
  const assembler = anthropic.newAssembler(0);
  const start = {
    type: "message_start",
    message: { id: "m", content: [], usage: { input_tokens: 10, output_tokens: 1 } },
  };
  assembler.add(event(JSON.stringify(start), "message_start"));
  assert.deepEqual(assembler.usage, { input_tokens: 10, output_tokens: 1 });
  for (const output of [3, 6]) {
    const delta = { type: "message_delta", delta: {}, usage: { output_tokens: output } };
    assembler.add(event(JSON.stringify(delta), "message_delta"));
  }
  assert.deepEqual(assembler.usage, { input_tokens: 10, output_tokens: 6 });
  // A cumulative delta that repeats input_tokens, or sends null, does not double or erase it.
  const full = { type: "message_delta", usage: { input_tokens: 10, output_tokens: 8, x: null } };
  assembler.add(event(JSON.stringify(full), "message_delta"));
  assert.deepEqual(assembler.usage, { input_tokens: 10, output_tokens: 8 });
});

Deno.test("anthropic assembler rebuilds thinking, text and tool_use blocks", async () => {
  const { assembler } = assemble(
    "anthropic",
    await fixtureEvents("anthropic_messages_stream_tool_use.sse", 2),
  );
  assert.equal(assembler.complete, true);
  const usage = {
    input_tokens: 637,
    cache_creation_input_tokens: 1200,
    cache_read_input_tokens: 0,
    output_tokens: 89,
  };
  assert.deepEqual(assembler.response(), {
    id: "msg_014p7gG3wDgGV9EUtLvnow3U",
    type: "message",
    role: "assistant",
    model: "claude-sonnet-4-5-20250929",
    content: [
      {
        type: "thinking",
        thinking: "The user wants the weather in Paris.",
        signature: "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
      },
      { type: "text", text: "Let me check the weather." },
      {
        type: "tool_use",
        id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        name: "get_weather",
        input: { location: "Paris", unit: "celsius" },
      },
    ],
    stop_reason: "tool_use",
    stop_sequence: null,
    usage,
  });
});

Deno.test("anthropic assembler rebuilds long thinking, text and tool input whole, and cuts them at its text budget", () => {
  const start = (index: number, block: unknown) =>
    event(
      JSON.stringify({ type: "content_block_start", index, content_block: block }),
      "content_block_start",
    );
  const delta = (index: number, body: unknown) =>
    event(
      JSON.stringify({ type: "content_block_delta", index, delta: body }),
      "content_block_delta",
    );
  const stop = (index: number) =>
    event(JSON.stringify({ type: "content_block_stop", index }), "content_block_stop");
  const thoughts = Array.from({ length: 500 }, (_, i) => `t${i} `);
  const words = Array.from({ length: 1000 }, (_, i) => `w${i} `);
  const list = Array.from({ length: 200 }, (_, i) => i);
  const json = JSON.stringify({ list });
  const build = (limit: number) => {
    const assembler = anthropic.newAssembler(limit);
    assembler.add(
      event(JSON.stringify({ type: "message_start", message: { id: "m1" } }), "message_start"),
    );
    assembler.add(start(0, { type: "thinking", thinking: "" }));
    for (const piece of thoughts) {
      assembler.add(delta(0, { type: "thinking_delta", thinking: piece }));
    }
    assembler.add(stop(0));
    assembler.add(start(1, { type: "text", text: "" }));
    for (const piece of words) assembler.add(delta(1, { type: "text_delta", text: piece }));
    assembler.add(stop(1));
    assembler.add(start(2, { type: "tool_use", id: "tu", name: "f", input: {} }));
    for (let i = 0; i < json.length; i += 3) {
      assembler.add(delta(2, { type: "input_json_delta", partial_json: json.slice(i, i + 3) }));
    }
    return (assembler.response() as { content: Record<string, unknown>[] }).content;
  };
  assert.deepEqual(build(0), [
    { type: "thinking", thinking: thoughts.join("") },
    { type: "text", text: words.join("") },
    { type: "tool_use", id: "tu", name: "f", input: { list } },
  ]);
  const cut = build(50);
  assert.equal(cut[0].thinking, thoughts.join("").slice(0, 50));
  assert.equal(cut[1].text, "");
  assert.deepEqual(cut[2].input, {});
});

Deno.test("anthropic assembler starts a block over when its start comes again", () => {
  const assembler = anthropic.newAssembler(0);
  const send = (type: string, body: Record<string, unknown>) =>
    assembler.add(event(JSON.stringify({ type, ...body }), type));
  send("message_start", { message: { id: "m1" } });
  send("content_block_start", { index: 0, content_block: { type: "text", text: "" } });
  for (const text of ["a", "b"]) {
    send("content_block_delta", { index: 0, delta: { type: "text_delta", text } });
  }
  send("content_block_start", { index: 0, content_block: { type: "text", text: "X" } });
  send("content_block_delta", { index: 0, delta: { type: "text_delta", text: "c" } });
  send("content_block_stop", { index: 0 });
  assert.deepEqual((assembler.response() as { content: unknown[] }).content, [
    { type: "text", text: "Xc" },
  ]);
});

Deno.test("anthropic assembler parses tool input even when the stream stops before block stop", async () => {
  const events = await fixtureEvents("anthropic_messages_stream_tool_use.sse");
  const cut = events.findIndex((e) =>
    e.event === "content_block_stop" && JSON.parse(e.data).index === 2
  );
  const { assembler } = assemble("anthropic", events.slice(0, cut));
  assert.equal(assembler.complete, false);
  const content = (assembler.response() as { content: { input?: unknown }[] }).content;
  assert.deepEqual(content[2].input, { location: "Paris", unit: "celsius" });
});

Deno.test("anthropic assembler gives each event its commit role", async () => {
  const events = await fixtureEvents("anthropic_messages_stream.sse");
  const { roles } = assemble("anthropic", events);
  assert.deepEqual(
    events.map((e, i) => [e.event, roles[i]]),
    [
      ["message_start", "hold"],
      ["content_block_start", "hold"],
      ["ping", "hold"],
      ["content_block_delta", "output"],
      ["content_block_delta", "output"],
      ["content_block_stop", "hold"],
      ["message_delta", "output"],
      ["message_stop", "output"],
    ],
  );

  const overloaded = await fixtureEvents("anthropic_stream_overloaded.sse");
  assert.equal(overloaded.length, 1);
  const failed = anthropic.newAssembler(0);
  assert.equal(failed.add(overloaded[0]), "error");
  assert.equal(failed.complete, false);
  assert.equal(failed.usage, null);
  assert.equal(failed.response(), null);
  // An error event whose data is not JSON is still an error.
  assert.equal(anthropic.newAssembler(0).add(event("oops", "error")), "error");
});

Deno.test("anthropic usageOf reads a message body and is null without usage", async () => {
  const body = await fixtureJson("anthropic_message.json");
  assert.deepEqual(anthropic.usageOf(body), {
    input_tokens: 12,
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: 0,
    output_tokens: 11,
    service_tier: "standard",
  });
  const { usage: _, ...withoutUsage } = body as Record<string, unknown>;
  assert.equal(anthropic.usageOf(withoutUsage), null);
  assert.equal(anthropic.usageOf(null), null);
  assert.equal(anthropic.usageOf("text"), null);
});

Deno.test("anthropic errorBody uses the API's error types by status", () => {
  const cases: [number, string][] = [
    [400, "invalid_request_error"],
    [401, "authentication_error"],
    [404, "not_found_error"],
    [429, "rate_limit_error"],
    [500, "api_error"],
    [502, "api_error"],
    [503, "api_error"],
    [504, "timeout_error"],
    [529, "overloaded_error"],
  ];
  for (const [status, type] of cases) {
    assert.deepEqual(
      anthropic.errorBody(status, `Failed with ${status}`, "ignored"),
      { type: "error", error: { type, message: `Failed with ${status}` } },
      String(status),
    );
  }
});

Deno.test("anthropic streamErrorEvent is a named error event the SDK raises", () => {
  const text = anthropic.streamErrorEvent("Upstream connection reset");
  assert.ok(text.startsWith("event: error\n"));
  assert.ok(text.endsWith("\n\n"));
  const events = eventsOf(encoder.encode(text));
  assert.equal(events.length, 1);
  assert.equal(events[0].event, "error");
  assert.deepEqual(JSON.parse(events[0].data), {
    type: "error",
    error: { type: "api_error", message: "Upstream connection reset" },
  });
  assert.equal(anthropic.newAssembler(0).add(events[0]), "error");
});

Deno.test("dialects are keyed by their type", () => {
  assert.equal(dialects.openai, openai);
  assert.equal(dialects.anthropic, anthropic);
  assert.equal(openai.type, "openai");
  assert.equal(anthropic.type, "anthropic");
});
