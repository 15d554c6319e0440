// Genuine LoRaWAN frames for the edge agent's tests, made by npm lora-packet.
// Input (stdin): a JSON array of frame requests; output (stdout): a JSON array of hex PHYPayloads.
//   {"kind":"data","confirmed":false,"devAddr":"01020304","fcnt":65536,"port":2,
//    "payload":"03670110","nwkSKey":"…","appSKey":"…"}
//   {"kind":"join","appEui":"…","devEui":"…","devNonce":"1234","appKey":"…"}
//   {"kind":"decrypt_join_accept","phy":"…","appKey":"…","devNonce":"…"} -> {"devAddr","nwkSKey","appSKey"}
const lora = require("lora-packet");

const hex = (s) => Buffer.from(s, "hex");
const requests = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = requests.map((r) => {
  if (r.kind === "data") {
    const msb = Buffer.alloc(2);
    msb.writeUInt16LE(Math.floor(r.fcnt / 65536) & 0xffff);
    const p = lora.fromFields(
      {
        MType: r.confirmed ? "Confirmed Data Up" : "Unconfirmed Data Up",
        DevAddr: hex(r.devAddr),
        FCtrl: { ADR: false, ACK: false, ADRACKReq: false, FPending: false },
        FCnt: r.fcnt % 65536,
        FPort: r.port,
        payload: hex(r.payload),
      },
      hex(r.appSKey),
      hex(r.nwkSKey),
      undefined,
      msb,
    );
    return p.getPHYPayload().toString("hex");
  }
  if (r.kind === "join") {
    const p = lora.fromFields(
      { MType: "Join Request", AppEUI: hex(r.appEui), DevEUI: hex(r.devEui), DevNonce: hex(r.devNonce) },
      undefined,
      undefined,
      hex(r.appKey),
    );
    return p.getPHYPayload().toString("hex");
  }
  if (r.kind === "decrypt_join_accept") {
    const enc = lora.fromWire(hex(r.phy));
    const ja = lora.fromWire(lora.decryptJoinAccept(enc, hex(r.appKey)));
    const micOk = lora.verifyMIC(ja, undefined, hex(r.appKey));
    const keys = lora.generateSessionKeys(hex(r.appKey), ja.NetID, ja.AppNonce, hex(r.devNonce));
    return {
      micOk,
      devAddr: ja.DevAddr.toString("hex"),
      nwkSKey: keys.NwkSKey.toString("hex"),
      appSKey: keys.AppSKey.toString("hex"),
    };
  }
  throw new Error(`unknown request kind ${r.kind}`);
});
process.stdout.write(JSON.stringify(out));
