#!/usr/bin/env node
// A sessiond caller in plain Node (CommonJS, no build step): proof that any gRPC language can use
// sessiond from the .proto files alone. It loads protos/sessiond/v1/session_service.proto at run
// time with @grpc/proto-loader, then walks one session through its life:
//
//   CreateSession -> ExecuteActivity -> GetSessionInfo -> CompleteSession -> GetSessionInfo
//
// and prints one JSON line with what it saw. Any error (an RPC status, an activity failure, a
// state other than the expected one) prints a JSON line on stderr and exits 1; the session is
// completed on the way out whenever it was created.
//
//   node interop/node/client.js --target 127.0.0.1:50051 --task-queue q --activity echo --input '"hi"'
//
// Payloads use the Python library's default converter: metadata {"encoding": "json/plain"}, data
// the JSON text. An activity's input is its list of arguments: --input is the one argument (JSON),
// sent as a one-element JSON array, which is what a Python SessionWorker decodes. The well-known types (google/protobuf/duration.proto, timestamp.proto) need no
// include directory: protobufjs bundles them.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const JSON_ENCODING = 'json/plain';

function parseCommandLine() {
  const { values } = parseArgs({
    options: {
      target: { type: 'string', default: process.env.SESSIOND_ADDRESS || '127.0.0.1:50051' },
      'task-queue': { type: 'string' },
      activity: { type: 'string', default: 'echo' },
      input: { type: 'string', default: '"hello from node"' },
      timeout: { type: 'string', default: '30' },
      token: { type: 'string', default: process.env.SESSIOND_CALLER_TOKEN || '' },
    },
    strict: true,
  });
  if (!values['task-queue']) {
    throw new Error('--task-queue is required');
  }
  const timeout = Number(values.timeout);
  if (!(timeout > 0)) {
    throw new Error(`--timeout must be a positive number of seconds, got ${values.timeout}`);
  }
  return {
    target: values.target,
    taskQueue: values['task-queue'],
    activity: values.activity,
    input: JSON.parse(values.input),
    timeout,
    token: values.token,
  };
}

function loadService() {
  const definition = protoLoader.loadSync('sessiond/v1/session_service.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto (session_id), like every other sessiond client
    longs: String,
    enums: String, // SESSION_STATE_OPEN rather than 1
    defaults: true,
    oneofs: true, // ExecuteActivityResponse.outcome names the set member
  });
  return grpc.loadPackageDefinition(definition).sessiond.v1.SessionService;
}

// A promise-returning unary call with a deadline and, when set, the caller's bearer token.
function unary(client, method, request, options) {
  const metadata = new grpc.Metadata();
  if (options.token) {
    metadata.set('authorization', `Bearer ${options.token}`);
  }
  const deadline = new Date(Date.now() + options.timeout * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (error, response) => {
      if (error) {
        error.rpc = method;
        reject(error);
      } else {
        resolve(response);
      }
    });
  });
}

function toPayload(value) {
  return {
    metadata: { encoding: Buffer.from(JSON_ENCODING) },
    data: Buffer.from(JSON.stringify(value)),
  };
}

function fromPayload(payload) {
  const encoding = payload.metadata && payload.metadata.encoding ? payload.metadata.encoding.toString() : '';
  if (encoding === JSON_ENCODING) {
    return payload.data.length ? JSON.parse(payload.data.toString()) : null;
  }
  return { encoding, base64: Buffer.from(payload.data).toString('base64') };
}

function isoTime(timestamp) {
  if (!timestamp) {
    return null;
  }
  return new Date(Number(timestamp.seconds) * 1000 + Math.floor(timestamp.nanos / 1e6)).toISOString();
}

async function run(options) {
  const SessionService = loadService();
  const client = new SessionService(options.target, grpc.credentials.createInsecure());
  let sessionId = null;
  try {
    const created = await unary(client, 'CreateSession', {
      task_queue: options.taskQueue,
      options: { creation_timeout: { seconds: Math.ceil(options.timeout) } },
    }, options);
    sessionId = created.session.session_id;

    const outcome = await unary(client, 'ExecuteActivity', {
      session_id: sessionId,
      activity_type: options.activity,
      input: toPayload([options.input]), // the argument list: one argument
      start_to_close_timeout: { seconds: Math.ceil(options.timeout) },
    }, options);
    if (outcome.outcome !== 'result') {
      const failure = outcome.failure;
      throw Object.assign(new Error(`activity ${options.activity} failed: ${failure.type}: ${failure.message}`),
        { activityFailure: { type: failure.type, message: failure.message, non_retryable: failure.non_retryable } });
    }

    const info = await unary(client, 'GetSessionInfo', { session_id: sessionId }, options);
    const completed = await unary(client, 'CompleteSession', { session_id: sessionId }, options);
    sessionId = null; // completed: nothing left to clean up
    const after = await unary(client, 'GetSessionInfo', { session_id: completed.session.session_id }, options);

    return {
      session_id: info.session.session_id,
      task_queue: info.session.task_queue,
      worker: {
        worker_id: info.session.worker.worker_id,
        identity: info.session.worker.identity,
        host_name: info.session.worker.host_name,
      },
      create_time: isoTime(info.session.create_time),
      state_before_complete: info.session.state,
      activity: { type: options.activity, result: fromPayload(outcome.result) },
      state_after_complete: completed.session.state,
      state_read_back: after.session.state,
      close_time: isoTime(after.session.close_time),
      server_incarnation: info.server_incarnation,
    };
  } finally {
    if (sessionId !== null) {
      // Completing is always safe (idempotent, a no-op on a FAILED session): never leak the slot.
      await unary(client, 'CompleteSession', { session_id: sessionId }, options).catch(() => {});
    }
    client.close();
  }
}

function describe(error) {
  if (typeof error.code === 'number' && error.rpc) {
    return { rpc: error.rpc, code: grpc.status[error.code] || String(error.code), details: error.details };
  }
  if (error.activityFailure) {
    return { activity_failure: error.activityFailure };
  }
  return { message: error.message };
}

async function main() {
  let options;
  try {
    options = parseCommandLine();
  } catch (error) {
    process.stderr.write(`${JSON.stringify({ error: { usage: error.message } })}\n`);
    return 2;
  }
  try {
    const seen = await run(options);
    process.stdout.write(`${JSON.stringify(seen)}\n`);
    return seen.state_after_complete === 'SESSION_STATE_CLOSED' ? 0 : 1;
  } catch (error) {
    process.stderr.write(`${JSON.stringify({ error: describe(error) })}\n`);
    return 1;
  }
}

main().then((code) => {
  process.exitCode = code;
});
