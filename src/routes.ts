import type { Config } from "./config.ts";
import { planCandidates, unservedModel } from "./plan.ts";
import { type Dialect, dialects } from "./providers/mod.ts";
import { openaiResponses } from "./providers/openai_responses.ts";

/** An API endpoint the router serves: which dialect, and where it goes under `base_url`. */
export interface ApiRoute {
  dialect: Dialect;
  upstreamPath: string;
}

const chat: ApiRoute = { dialect: dialects.openai, upstreamPath: "/chat/completions" };
const responses: ApiRoute = { dialect: openaiResponses, upstreamPath: "/responses" };
const embeddings: ApiRoute = { dialect: dialects.openai, upstreamPath: "/embeddings" };
const messages: ApiRoute = { dialect: dialects.anthropic, upstreamPath: "/v1/messages" };
const countTokens: ApiRoute = {
  dialect: dialects.anthropic,
  upstreamPath: "/v1/messages/count_tokens",
};

/**
 * The forwarded endpoints. Each answers with and without `/v1`, as clients configured either way
 * call: the official Anthropic SDKs add `/v1` to their base URL, the AI SDK expects it in it.
 */
export const API_ROUTES: Record<string, ApiRoute> = {
  "/openai/chat/completions": chat,
  "/openai/v1/chat/completions": chat,
  "/openai/responses": responses,
  "/openai/v1/responses": responses,
  "/openai/embeddings": embeddings,
  "/openai/v1/embeddings": embeddings,
  "/anthropic/v1/messages": messages,
  "/anthropic/messages": messages,
  "/anthropic/v1/messages/count_tokens": countTokens,
  "/anthropic/messages/count_tokens": countTokens,
};

/** The model lists, answered by the router itself from `model_mapping`. */
export const MODEL_LISTS: Record<string, Dialect> = {
  "/openai/models": dialects.openai,
  "/openai/v1/models": dialects.openai,
  "/anthropic/v1/models": dialects.anthropic,
  "/anthropic/models": dialects.anthropic,
};

/**
 * A request for one model (`/openai/models/{name}`, as the SDKs' `models.retrieve` sends it): its
 * dialect and the name, or undefined for other paths. The SDKs encode a `/` in a name; a raw one
 * is taken as part of the name too.
 */
export function modelPath(path: string): { dialect: Dialect; name: string } | undefined {
  const at = path.indexOf("/models/");
  if (at === -1) return undefined;
  const listEnd = at + "/models".length;
  const dialect = MODEL_LISTS[path.slice(0, listEnd)];
  if (dialect === undefined) return undefined;
  const raw = path.slice(listEnd + 1);
  try {
    return { dialect, name: decodeURIComponent(raw) };
  } catch {
    return { dialect, name: raw };
  }
}

/** The client-facing names of `model_mapping` that some provider of the dialect's type serves. */
export function listModels(config: Config, dialect: Dialect): Response {
  const names = Object.keys(config.model_mapping)
    .filter((name) => planCandidates(config, dialect, name).length > 0);
  return Response.json(dialect.modelList(names));
}

/**
 * One model, when a request for it would be routed: a mapped name or one a provider takes as it
 * is. A 404 in the API's format otherwise, as the provider would give for a model it lacks.
 */
export function describeModel(config: Config, dialect: Dialect, name: string): Response {
  if (name !== "" && planCandidates(config, dialect, name).length > 0) {
    return Response.json(dialect.modelEntry(name));
  }
  const body = dialect.errorBody(404, unservedModel(dialect, name), "model_not_found");
  return Response.json(body, { status: 404 });
}

/** The API a path belongs to, for errors on paths the router does not serve. */
export function dialectForPath(path: string): Dialect | undefined {
  if (path.startsWith("/anthropic/")) return dialects.anthropic;
  if (path.startsWith("/openai/")) return dialects.openai;
  return undefined;
}
