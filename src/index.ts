// The package entry of Mainstay (`import { connect } from 'mainstay'`): the client library and
// the public types an application needs. Servers, the manager and the CLI are started from the
// command line, not imported.

export { connect } from './client/client.ts';
export {
  BadRequestError, CompactedError, MainstayError, PreconditionFailedError, TimeoutError, UnavailableError,
} from './client/client.ts';
export type {
  Client, ClusterMapView, ConnectOptions, DeleteOptions, DeleteResult, GetResult, Item, ListOptions, PutOptions,
  PutResult, ReadOptions, ServerStatus, TxnInput, TxnOperation, TxnResult,
  Change, ChangesOptions, WatchOptions, ReconnectInfo, ClientErrorCode,
} from './client/client.ts';
export type { Consistency, ErrorCode } from './protocol/types.ts';
