import type { Config } from "./config.ts";
import type { ProviderHealth } from "./health.ts";
import type { RecordSink } from "./log.ts";
import { renderMetrics } from "./metrics.ts";
import type { Stats } from "./stats.ts";
import { VERSION } from "./version.ts";

/** What the read-only operator pages show. */
export interface PageSources {
  config: () => Config;
  stats: Stats;
  sink: RecordSink;
  health: ProviderHealth;
}

/** `GET` pages for operators and load balancers, by path. */
export const PAGES: Record<string, (sources: PageSources) => Response> = {
  "/health": () => Response.json({ status: "ok", version: VERSION }),
  "/health/providers": ({ config, health }) => {
    const providers = config().providers;
    const states = health.report(providers.map((p) => p.name));
    return Response.json({
      providers: states.map((state, i) => ({ ...state, type: providers[i].type })),
    });
  },
  "/stats": ({ stats, sink, health, config }) =>
    Response.json({
      ...stats.toJSON(sink),
      cooldowns: health.report(config().providers.map((p) => p.name))
        .filter((state) => state.state === "cooling_down")
        .map(({ name, cooling_until }) => ({ provider: name, until: cooling_until })),
    }),
  "/metrics": ({ stats, sink }) =>
    new Response(renderMetrics(stats, sink), {
      headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
    }),
};
