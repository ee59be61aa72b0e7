/** Severity of an operational message; `--log-level` sets the lowest one printed. */
export type LogLevel = "debug" | "info" | "warn" | "error";

export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

/** Operational messages (start, reloads, warnings), apart from the request log. */
export interface OpsLog {
  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void;
}

/**
 * JSON lines on stderr, so stdout stays free for the `listening on` line and, with
 * `logging.target: "stdout"`, for request records alone.
 */
export function stderrOpsLog(threshold: LogLevel): OpsLog {
  const min = LOG_LEVELS.indexOf(threshold);
  return {
    log(level, msg, fields = {}) {
      if (LOG_LEVELS.indexOf(level) < min) return;
      console.error(JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields }));
    },
  };
}
