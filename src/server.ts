import { createHandler } from "./app.ts";
import type { Config } from "./config.ts";
import { type RecordSink, RotatingJsonLinesFile } from "./log.ts";
import type { RequestRecord } from "./record.ts";

/** Where and how a router process listens and logs. */
export interface ServerOptions {
  host: string;
  port: number;
  logDir: string;
  /** Called with the real address once the socket is bound. */
  onListen(url: string): void;
  /** Operational messages (log write failures) for the operator. */
  onWarning(message: string): void;
  /** Sees every finished record too, e.g. for the demo's console summary. */
  onRecord?(record: RequestRecord): void;
}

/** A running router; `stop` lets in-flight requests finish and writes every queued record. */
export interface RunningServer {
  port: number;
  stop(): Promise<void>;
}

/** Binds the router to a socket with a request log: shared by `main.ts` and the demo. */
export function startServer(config: Config, options: ServerOptions): RunningServer {
  const file = new RotatingJsonLinesFile(
    options.logDir,
    { maxBytes: 50 * 1024 * 1024, maxFiles: 10 },
    options.onWarning,
  );
  const onRecord = options.onRecord;
  const sink: RecordSink = onRecord === undefined ? file : {
    write(record) {
      file.write(record);
      onRecord(record);
    },
    close: () => file.close(),
  };
  const server = Deno.serve({
    hostname: options.host,
    port: options.port,
    onListen: ({ hostname, port }) => {
      const host = hostname.includes(":") ? `[${hostname}]` : hostname;
      options.onListen(`http://${host}:${port}`);
    },
  }, createHandler(config, { sink }));
  return {
    port: server.addr.port,
    async stop() {
      await server.shutdown();
      await sink.close();
    },
  };
}
