import type { Config, ProviderConfig } from "./config.ts";
import type { Dialect } from "./providers/mod.ts";

/** One (provider, upstream model) pair to try. */
export interface Candidate {
  provider: ProviderConfig;
  model: string;
}

/** What a client is told, in a request's answer or a model lookup, of a model nothing serves. */
export function unservedModel(dialect: Dialect, model: string): string {
  return `No ${dialect.type} provider serves model "${model}"`;
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

/**
 * Per endpoint type, the plans made so far. Model names are the client's, so their number is
 * capped, and a name longer than any real model's is planned afresh rather than kept.
 */
const plans = new WeakMap<Config, Map<Dialect["type"], Map<string, readonly Candidate[]>>>();
const MAX_PLANS = 1024;
const MAX_KEPT_NAME = 256;

/**
 * `planCandidates`, made once per config, endpoint and model: a config is never changed once
 * loaded (a reload brings a new one), so neither is its plan for a model. Callers do not change
 * the list they get.
 */
export function candidatesFor(
  config: Config,
  dialect: Dialect,
  model: string,
): readonly Candidate[] {
  let byType = plans.get(config);
  if (byType === undefined) plans.set(config, byType = new Map());
  let byModel = byType.get(dialect.type);
  if (byModel === undefined) byType.set(dialect.type, byModel = new Map());
  let plan = byModel.get(model);
  if (plan === undefined) {
    plan = planCandidates(config, dialect, model);
    if (model.length > MAX_KEPT_NAME) return plan;
    if (byModel.size >= MAX_PLANS) byModel.clear();
    byModel.set(model, plan);
  }
  return plan;
}
