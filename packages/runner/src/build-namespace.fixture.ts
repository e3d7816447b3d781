/*
 * Run by build-users.test.ts in a process without CAP_SYS_ADMIN (as in a container): says whether build
 * namespaces are supported, and runs a build as `uid` in `ws`, printing both as JSON.
 */
import { runPhases } from './bash-session.js';
import { parseBuildspec } from './buildspec.js';
import { namespaceSupport } from './build-namespace.js';

const [ws, uid] = process.argv.slice(2);
const spec = parseBuildspec(
  'version: 0.2\nenv:\n  exported-variables: [WHO, ONE]\nphases:\n  build:\n    commands:\n      - WHO=$(id -u)\n      - ONE=$([ -e /proc/1 ] && echo visible || echo hidden)\n',
);
const run = await runPhases(spec, { workspace: ws!, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, user: { uid: Number(uid), gid: Number(uid) } });
process.stdout.write(JSON.stringify({ support: namespaceSupport(), status: run.status, exported: run.exportedVariables }));
