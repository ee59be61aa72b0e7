import type { Config } from "./config.ts";
import { planCandidates } from "./plan.ts";
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

/** The forwarded endpoints. OpenAI's also answer with `/v1`, as clients configured either way call. */
export const API_ROUTES: Record<string, ApiRoute> = {
  "/openai/chat/completions": chat,
  "/openai/v1/chat/completions": chat,
  "/openai/responses": responses,
  "/openai/v1/responses": responses,
  "/openai/embeddings": embeddings,
  "/openai/v1/embeddings": embeddings,
  "/anthropic/v1/messages": { dialect: dialects.anthropic, upstreamPath: "/v1/messages" },
  "/anthropic/v1/messages/count_tokens": {
    dialect: dialects.anthropic,
    upstreamPath: "/v1/messages/count_tokens",
  },
};

/** The model lists, answered by the router itself from `model_mapping`. */
export const MODEL_LISTS: Record<string, Dialect> = {
  "/openai/models": dialects.openai,
  "/openai/v1/models": dialects.openai,
  "/anthropic/v1/models": dialects.anthropic,
};

/** The client-facing names of `model_mapping` that some provider of the dialect's type serves. */
export function listModels(config: Config, dialect: Dialect): Response {
  const names = Object.keys(config.model_mapping)
    .filter((name) => planCandidates(config, dialect, name).length > 0);
  return Response.json(dialect.modelList(names));
}

/** The API a path belongs to, for errors on paths the router does not serve. */
export function dialectForPath(path: string): Dialect | undefined {
  if (path.startsWith("/anthropic/")) return dialects.anthropic;
  if (path.startsWith("/openai/")) return dialects.openai;
  return undefined;
}
