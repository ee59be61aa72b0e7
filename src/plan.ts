import type { Config, ProviderConfig } from "./config.ts";
import type { Dialect } from "./providers/mod.ts";

/** One (provider, upstream model) pair to try. */
export interface Candidate {
  provider: ProviderConfig;
  model: string;
}

/**
 * The attempt order for a model: providers of the endpoint's type by ascending priority (ties in
 * config order), and for each, the mapping's targets that apply to it, in list order. A model
 * with no mapping is forwarded under its own name. Each pair appears once.
 */
export function planCandidates(config: Config, dialect: Dialect, model: string): Candidate[] {
  // Own keys only: a client's "constructor" or "toString" is a model name, not a prototype member.
  const targets = Object.hasOwn(config.model_mapping, model)
    ? config.model_mapping[model]
    : [model];
  const providers = config.providers
    .filter((provider) => provider.type === dialect.type)
    .sort((a, b) => a.priority - b.priority);
  const seen = new Set<string>();
  const candidates: Candidate[] = [];
  for (const provider of providers) {
    for (const target of targets) {
      let upstreamModel: string;
      if (typeof target === "string") {
        if (provider.models !== undefined && !provider.models.includes(target)) continue;
        upstreamModel = target;
      } else {
        if (target.provider !== provider.name) continue;
        upstreamModel = target.model ?? model;
      }
      const key = JSON.stringify([provider.name, upstreamModel]);
      if (seen.has(key)) continue;
      seen.add(key);
      candidates.push({ provider, model: upstreamModel });
    }
  }
  return candidates;
}
