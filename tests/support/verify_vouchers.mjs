// Does mppx accept these vouchers? Each one is checked with mppx's own
// verifyVoucher (the check its session server applies to every voucher credential)
// against the escrow, the chain and the signer the channel names. Test use only.
//
//   node verify_vouchers.mjs < {escrow, chainId, signer, vouchers: [{channelId, cumulativeAmount, signature}]}
//   -> [true | false, ...]
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const pinned = createRequire(join(root, 'tools', 'chain', 'package.json'))
const { Session } = await import(pathToFileURL(pinned.resolve('mppx/tempo')).href)
const { Voucher } = Session.Precompile

const input = JSON.parse(readFileSync(0, 'utf8'))
const results = input.vouchers.map((v) => Voucher.verifyVoucher(
  input.escrow, input.chainId,
  Voucher.parseVoucherFromPayload(v.channelId, v.cumulativeAmount, v.signature),
  input.signer,
))
process.stdout.write(JSON.stringify(results))
