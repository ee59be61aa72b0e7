/**
 * Other proxies `deno task bench --with nginx,portkey` puts beside the router, each in front of
 * the same mock: nginx as a plain reverse proxy, and Portkey's AI gateway on Node. Either is used
 * only when installed; nothing is downloaded.
 */
import { type LoadRequest, post } from "./load.ts";

/** A process the benchmark drives. */
export interface Target {
  pid: number;
  /** The request for an OpenAI chat completion with this body, as the target takes it. */
  request(body: string): LoadRequest;
  stop(): Promise<void>;
}

export const extraNames = ["nginx", "portkey"] as const;
export type ExtraName = (typeof extraNames)[number];

/** Starts one in front of `upstream` ("http://127.0.0.1:PORT"). */
type Start = (upstream: string) => Promise<Target>;

export interface Extra {
  name: ExtraName;
  start: Start;
  /** Started in front of the upstream `startExtras` was given, and checked. */
  running: Target;
}

const PORTKEY_INSTALL = "install it with `npm install --prefix DIR @portkey-ai/gateway@1.15.2 " +
  "@hono/node-server@1.13.5 @hono/node-ws@1.2.0` and put DIR/node_modules/.bin on PATH";
const PORTKEY_STREAMS = "its streams need @hono/node-server 1.13.5 (Portkey-AI/gateway#1389); " +
  PORTKEY_INSTALL;

/** The first of `candidates` found as a file on PATH (bare names) or as given (paths). */
async function findProgram(...candidates: string[]): Promise<string | null> {
  const dirs = (Deno.env.get("PATH") ?? "").split(":").filter((dir) => dir !== "");
  for (const candidate of candidates) {
    const paths = candidate.includes("/") ? [candidate] : dirs.map((dir) => `${dir}/${candidate}`);
    for (const path of paths) {
      if (await Deno.stat(path).then((info) => info.isFile, () => false)) return path;
    }
  }
  return null;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = listener.addr.port;
  listener.close();
  return port;
}

async function answers(url: string): Promise<boolean> {
  try {
    await (await fetch(url)).body?.cancel();
    return true;
  } catch {
    return false;
  }
}

/** Spawns `program` and waits until `url` answers anything. */
async function spawn(
  program: string,
  args: string[],
  url: string,
  request: (body: string) => LoadRequest,
): Promise<Target> {
  const child = new Deno.Command(program, { args, stdout: "null", stderr: "inherit" }).spawn();
  let exited = false;
  child.status.then(() => exited = true);
  const deadline = Date.now() + 10_000;
  while (!(await answers(url))) {
    if (exited || Date.now() > deadline) {
      if (!exited) child.kill("SIGKILL");
      await child.status;
      throw new Error(`${program} did not start listening on ${url}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    pid: child.pid,
    request,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

/**
 * nginx as a plain reverse proxy, mapping paths like bench/bare_proxy.ts. `master_process off`
 * makes it one process, so the pid the benchmark samples for RSS is the one serving requests.
 */
async function nginx(program: string, upstream: string, work: string): Promise<Target> {
  const dir = await Deno.makeTempDir({ dir: work, prefix: "nginx-" });
  const port = freePort();
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    `daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream mock {
    server ${new URL(upstream).host};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    proxy_request_buffering off;
    location /openai/ { proxy_pass http://mock/v1/; }
    location /anthropic/ { proxy_pass http://mock/; }
  }
}
`,
  );
  const url = `http://127.0.0.1:${port}`;
  return await spawn(
    program,
    ["-p", dir, "-c", `${dir}/nginx.conf`, "-e", `${dir}/error.log`],
    url,
    (body) => ({ url: `${url}/openai/chat/completions`, body }),
  );
}

/**
 * Portkey's gateway, told per request which provider and host to call. It listens on every
 * interface and has no flag to narrow that.
 */
async function portkey(program: string, upstream: string): Promise<Target> {
  const port = freePort();
  const url = `http://127.0.0.1:${port}`;
  const headers = {
    "x-portkey-provider": "openai",
    "x-portkey-custom-host": `${upstream}/v1`,
    "authorization": "Bearer bench-key",
  };
  return await spawn(
    program,
    [`--port=${port}`, "--headless"],
    url,
    (body) => ({ url: `${url}/v1/chat/completions`, body, headers }),
  );
}

/** A start function for `name` if it is installed, or a line saying what is missing. */
async function find(name: ExtraName, work: string): Promise<Start | string> {
  if (name === "nginx") {
    const program = await findProgram("nginx", "/usr/sbin/nginx");
    if (program === null) return "nginx is neither on PATH nor at /usr/sbin/nginx";
    return (upstream) => nginx(program, upstream, work);
  }
  const program = await findProgram("gateway");
  if (program === null || !(await Deno.realPath(program)).includes("/@portkey-ai/gateway/")) {
    return `no \`gateway\` of @portkey-ai/gateway on PATH; ${PORTKEY_INSTALL}`;
  }
  return (upstream) => portkey(program, upstream);
}

/** Why `target` cannot be measured: a chat completion, plain or streamed, that fails. */
async function fault(target: Target): Promise<string | null> {
  for (const stream of [false, true]) {
    const body = JSON.stringify({
      model: "gpt-4o-mini",
      stream,
      messages: [{ role: "user", content: "Hello" }],
    });
    const response = await post(target.request(body));
    const text = await response.text();
    if (!response.ok || (stream && !text.includes("data: [DONE]"))) {
      return `a ${stream ? "streamed" : "plain"} chat completion answered ${response.status} ` +
        text.slice(0, 200);
    }
  }
  return null;
}

async function startOne(name: ExtraName, upstream: string, work: string): Promise<Extra | string> {
  const start = await find(name, work);
  if (typeof start === "string") return start;
  let running: Target | undefined;
  try {
    running = await start(upstream);
    const problem = await fault(running);
    if (problem === null) return { name, start, running };
    await running.stop();
    return name === "portkey" ? `${problem}; ${PORTKEY_STREAMS}` : problem;
  } catch (error) {
    await running?.stop();
    return String(error);
  }
}

/**
 * Starts each of `names` in front of `upstream` and checks it; one that is not installed, does not
 * start or fails the check is named on stderr and left out. `work` holds their files.
 */
export async function startExtras(
  names: ExtraName[],
  upstream: string,
  work: string,
): Promise<Extra[]> {
  const extras: Extra[] = [];
  for (const name of names) {
    const extra = await startOne(name, upstream, work);
    if (typeof extra === "string") console.error(`--with ${name}: left out, ${extra}`);
    else extras.push(extra);
  }
  return extras;
}
