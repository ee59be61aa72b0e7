import { AfterResponse } from "./after_response.ts";
import { createHandler } from "./app.ts";
import { type Config, configSecrets } from "./config.ts";
import { createHttpClient } from "./http_client.ts";
import { createRecordSink, type RecordSink } from "./log.ts";
import type { OpsLog } from "./ops.ts";
import type { RequestRecord } from "./record.ts";
import { InFlight } from "./upstream.ts";

/** Where and how a router process listens and logs. */
export interface ServerOptions {
  host: string;
  port: number;
  logDir: string;
  ops: OpsLog;
  /** Called with the real address once the socket is bound. */
  onListen(url: string): void;
  /** Sees every finished record too, e.g. for the demo's console summary. */
  onRecord?(record: RequestRecord): void;
}

/** A running router. */
export interface RunningServer {
  port: number;
  /** New requests use `config`; requests in flight keep the one they started with. */
  reload(config: Config): void;
  /**
   * Stops accepting, lets in-flight requests finish for up to `shutdown.grace_ms`, then aborts
   * the rest, and writes every queued record.
   */
  stop(): Promise<void>;
}

/** Binds the router to a socket with its request log: shared by `main.ts` and the demo. */
export function startServer(config: Config, options: ServerOptions): RunningServer {
  let current = config;
  const secrets = configSecrets(config);
  const log = createRecordSink(config.logging, {
    dir: options.logDir,
    secrets,
    onError: (message) => options.ops.log("error", message),
    onRecover: (message) => options.ops.log("info", message),
  });
  const onRecord = options.onRecord;
  const sink: RecordSink = onRecord === undefined ? log : {
    write(record, secrets) {
      log.write(record, secrets);
      onRecord(record);
    },
    close: () => log.close(),
    get writeErrors() {
      return log.writeErrors;
    },
    get droppedRecords() {
      return log.droppedRecords;
    },
  };
  const inFlight = new InFlight();
  const upstream = createHttpClient();
  const afterResponse = new AfterResponse((error) => {
    options.ops.log("error", `A finished request could not be recorded: ${error}`);
  });
  const server = Deno.serve({
    hostname: options.host,
    port: options.port,
    onListen: ({ hostname, port }) => {
      const host = hostname.includes(":") ? `[${hostname}]` : hostname;
      options.onListen(`http://${host}:${port}`);
    },
  }, createHandler(() => current, { sink, inFlight, upstream, afterResponse }));
  return {
    port: server.addr.port,
    reload(next) {
      current = next;
      // Keys the new config dropped stay redacted: requests in flight still use them, and a
      // rotated key is the one a provider's error message is likely to quote.
      for (const secret of configSecrets(next)) {
        if (!secrets.includes(secret)) secrets.push(secret);
      }
    },
    async stop() {
      const grace = setTimeout(() => {
        options.ops.log("warn", "Grace period over: aborting requests still in flight");
        inFlight.abortAll();
      }, current.shutdown.grace_ms);
      inFlight.beginStop();
      await server.shutdown();
      clearTimeout(grace);
      inFlight.close();
      upstream.close();
      afterResponse.flush();
      await sink.close();
    },
  };
}
